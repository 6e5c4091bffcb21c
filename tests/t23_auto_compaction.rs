//! Auto-compaction (issue 14): the leader compacts through the log on etcd's schedule, so
//! every node ends at the same compact revision and refuses reads below it.

use std::time::Duration;

use etcd_client::GetOptions;
use muster_server::compactor::AutoCompactionMode;
use muster_tests::{etcd, status, wait_until, Cluster};
use tracing::info;

const T: Duration = Duration::from_secs(15);

/// Every node's compact revision.
fn compacted(cluster: &Cluster) -> Vec<i64> {
    cluster
        .running()
        .into_iter()
        .filter_map(|id| cluster.node(id).ok())
        .map(|n| n.sm().read().mvcc.compact_revision())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revision_mode_keeps_the_last_n_revisions() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(3, |c| {
        c.auto_compaction.mode = AutoCompactionMode::Revision;
        c.auto_compaction.retention_revisions = 10;
        c.auto_compaction.check_interval = Duration::from_millis(100);
    })
    .await?;
    let leader = cluster.wait_for_leader(T).await?;
    let mut c = etcd(&cluster, leader).await?;
    let mut last = 0;
    for i in 0..40 {
        last = c
            .put(format!("ac/{i}"), "v", None)
            .await?
            .header()
            .map(|h| h.revision())
            .unwrap_or_default();
    }
    info!("--- step: every node compacts to {} - 10", last);
    wait_until(
        T,
        "every node to compact to the last revision - 10",
        || async {
            compacted(&cluster)
                .iter()
                .all(|r| *r == last - 10)
                .then_some(())
        },
    )
    .await?;
    let s = status(
        c.get("ac/0", Some(GetOptions::new().with_revision(last - 11)))
            .await
            .expect_err("below the compact revision"),
    )?;
    assert_eq!(s.code(), tonic::Code::OutOfRange);
    c.get("ac/0", Some(GetOptions::new().with_revision(last - 10)))
        .await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn periodic_mode_keeps_the_retention_period() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(3, |c| {
        c.auto_compaction.mode = AutoCompactionMode::Periodic;
        // Ticks of max(retention / 10, 1 s): compaction within about 2 s.
        c.auto_compaction.retention_period = Duration::from_secs(1);
    })
    .await?;
    let leader = cluster.wait_for_leader(T).await?;
    let mut c = etcd(&cluster, leader).await?;
    let first = c
        .put("ap/k", "1", None)
        .await?
        .header()
        .map(|h| h.revision())
        .unwrap_or_default();
    info!("--- step: history older than the retention period goes");
    wait_until(T, "every node to compact past the first put", || async {
        compacted(&cluster)
            .iter()
            .all(|r| *r >= first)
            .then_some(())
    })
    .await?;
    let all = compacted(&cluster);
    assert!(
        all.windows(2).all(|w| w[0] == w[1]),
        "one compact revision: {all:?}"
    );
    cluster.shutdown().await;
    Ok(())
}
