//! Alarms (issue 14) with the real etcdctl: the space quota raises NOSPACE through the log,
//! after which every node refuses writes that take space with etcd's error while deletes and
//! compaction still work, until `etcdctl alarm disarm`; the corruption check raises CORRUPT
//! naming the member whose keyspace differs, after which every write is refused.

use std::time::Duration;

use muster_tests::{etcd, etcdctl, etcdctl_ok, status, wait_until, Cluster};
use tonic::Code;
use tracing::info;

const T: Duration = Duration::from_secs(15);
const QUOTA: u64 = 64 * 1024;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quota_raises_nospace_until_disarmed() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(3, |c| c.quota_backend_bytes = QUOTA).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let follower = cluster.follower_of(leader);
    let mut c = etcd(&cluster, follower).await?;
    let eps = cluster.endpoints();

    info!("--- step: 4 KiB puts until the {QUOTA}-byte quota refuses one");
    let value = "x".repeat(4096);
    let mut refused = None;
    for i in 0..100 {
        if let Err(e) = c.put(format!("q/{i:03}"), value.clone(), None).await {
            refused = Some((i, status(e)?));
            break;
        }
    }
    let (at, s) = refused.ok_or_else(|| anyhow::anyhow!("100 puts of 4 KiB all passed"))?;
    assert_eq!(
        (s.code(), s.message()),
        (
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded"
        )
    );
    assert!((10..=16).contains(&at), "refused at put {at}");

    info!("--- step: etcdctl alarm list names the member; every node refuses a put");
    let list = etcdctl_ok(&eps[..1], &["alarm", "list"], None)?;
    assert!(
        list.contains(&format!("memberID:{follower} alarm:NOSPACE")),
        "{list}"
    );
    for ep in &eps {
        let out = etcdctl(std::slice::from_ref(ep), &["put", "q/small", "1"], None)?;
        assert!(!out.status.success());
        assert!(
            stderr_of(&out).contains("etcdserver: mvcc: database space exceeded"),
            "{ep}: {}",
            stderr_of(&out)
        );
    }
    let status_out = etcdctl_ok(&eps[..1], &["endpoint", "status", "-w", "json"], None)?;
    assert!(status_out.contains("alarm:NOSPACE"), "{status_out}");

    info!("--- step: deletes and compaction still work and free the space");
    etcdctl_ok(&eps[..1], &["del", "--prefix", "q/"], None)?;
    let rev = c
        .get("q/", None)
        .await?
        .header()
        .map_or(0, |h| h.revision());
    etcdctl_ok(&eps[..1], &["compact", &rev.to_string()], None)?;
    wait_until(
        T,
        "every node's history to shrink below half the quota",
        || async {
            cluster
                .ids()
                .iter()
                .all(|id| {
                    cluster
                        .node(*id)
                        .is_ok_and(|n| n.sm().read().mvcc.space_used() < QUOTA / 2)
                })
                .then_some(())
        },
    )
    .await?;
    // Freed space does not clear the alarm by itself (as etcd).
    let s = status(c.put("q/small", "1", None).await.expect_err("alarm raised"))?;
    assert_eq!(s.code(), Code::ResourceExhausted);

    info!("--- step: etcdctl alarm disarm; writes pass again");
    let disarmed = etcdctl_ok(&eps[..1], &["alarm", "disarm"], None)?;
    assert!(disarmed.contains("alarm:NOSPACE"), "{disarmed}");
    assert_eq!(etcdctl_ok(&eps[..1], &["alarm", "list"], None)?.trim(), "");
    for ep in &eps {
        etcdctl_ok(std::slice::from_ref(ep), &["put", "q/small", "1"], None)?;
    }
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupted_member_raises_corrupt_and_writes_stop() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(3, |c| {
        c.corrupt_check_interval = Duration::from_millis(200);
    })
    .await?;
    let leader = cluster.wait_for_leader(T).await?;
    let mut c = etcd(&cluster, leader).await?;
    for i in 0..50 {
        c.put(format!("c/{i:02}"), format!("v{i}"), None).await?;
    }
    cluster.wait_converged(T).await?;
    let eps = cluster.endpoints();

    info!("--- step: healthy members agree");
    let leader_node = cluster.node(leader)?.clone();
    assert!(muster_server::corruption::check_once(&leader_node)
        .await
        .is_empty());
    assert!(c
        .alarm(
            etcd_client::AlarmAction::Get,
            etcd_client::AlarmType::None,
            None
        )
        .await?
        .alarms()
        .is_empty());

    info!("--- step: one follower's copy of a value changes; the periodic check finds it");
    let victim = cluster.follower_of(leader);
    assert!(cluster.corrupt_value(victim, b"c/07", b"bit flip")?);
    let list = wait_until(T, "etcdctl alarm list to show CORRUPT", || async {
        let out = etcdctl_ok(&eps[..1], &["alarm", "list"], None).ok()?;
        out.contains("alarm:CORRUPT").then_some(out)
    })
    .await?;
    assert_eq!(
        list.trim(),
        format!("memberID:{victim} alarm:CORRUPT"),
        "only the member that differs is named"
    );

    info!("--- step: every write is refused with etcd's error; reads still work");
    for id in cluster.ids() {
        let mut c = etcd(&cluster, id).await?;
        let s = status(c.put("c/new", "1", None).await.expect_err("corrupt"))?;
        assert_eq!(
            (s.code(), s.message()),
            (Code::DataLoss, "etcdserver: corrupt cluster"),
            "node {id}"
        );
        let s = status(c.delete("c/00", None).await.expect_err("corrupt"))?;
        assert_eq!(s.code(), Code::DataLoss);
        assert_eq!(c.get("c/01", None).await?.kvs().len(), 1);
    }
    let hashes = etcdctl_ok(&eps[..1], &["endpoint", "hashkv", "--cluster"], None)?;
    let distinct: std::collections::BTreeSet<&str> = hashes
        .lines()
        .filter_map(|l| l.split(", ").nth(1))
        .collect();
    assert_eq!(distinct.len(), 2, "{hashes}");
    cluster.shutdown().await;
    Ok(())
}
