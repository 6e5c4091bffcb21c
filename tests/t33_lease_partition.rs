//! A deposed leader never wrongly expires a lease: the leader is cut off from its peers while
//! clients keep a lease alive through the majority. The old leader's deadlines go stale and it
//! may even propose their expiry, but that entry can never commit; it refuses keep-alives it
//! cannot back with a quorum; after healing, the lease and its key are intact everywhere.

mod lease_util;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::PutOptions;
use lease_util::*;
use muster_tests::{etcd, wait_until, Cluster};
use tracing::info;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolated_old_leader_never_expires_a_lease_the_majority_keeps_alive() -> anyhow::Result<()>
{
    const TTL: i64 = 3;
    let cluster = Cluster::start(3).await?;
    let old = cluster.wait_for_leader(T).await?;
    let mut c = etcd(&cluster, old).await?;
    let id = c.lease_grant(TTL, None).await?.id();
    c.put("part/key", "v", Some(PutOptions::new().with_lease(id)))
        .await?;
    let majority: Vec<u64> = cluster.ids().into_iter().filter(|n| *n != old).collect();

    // The client keeps the lease alive through the majority's nodes only.
    let addrs: Vec<String> = majority
        .iter()
        .map(|n| cluster.addr(*n).to_string())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let renewed = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicBool::new(false));
    let task = {
        let (stop, renewed, lost) = (stop.clone(), renewed.clone(), lost.clone());
        tokio::spawn(async move {
            // The client's keep-alive period (TTL / 6).
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let mut next = 0;
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                next += 1;
                let addr = &addrs[next % addrs.len()];
                if let Ok(ttl) = keep_alive_once(addr, id).await {
                    if ttl <= 0 {
                        lost.store(true, Ordering::SeqCst);
                    }
                    renewed.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };

    info!(old, "--- step: isolate the leader");
    let index_before = cluster.node(old)?.last_log_index();
    cluster.isolate(old)?;
    let new = wait_until(T, "the majority to elect a new leader", || async {
        let views: Vec<Option<u64>> = majority
            .iter()
            .map(|n| cluster.node(*n).ok().and_then(|node| node.current_leader()))
            .collect();
        match views.first().copied().flatten() {
            Some(l) if l != old && views.iter().all(|v| *v == Some(l)) => Some(l),
            _ => None,
        }
    })
    .await?;
    info!(new, "--- step: new leader elected on the majority side");

    info!("--- step: the old leader's deadlines run out; it proposes or steps down");
    // Either it proposes the stale expiry (appended to its own log at most: it can never
    // commit), or Raft refuses the proposal and the keeper drops its deadlines. Both are safe;
    // neither may delete anything.
    let outcome = wait_until(
        Duration::from_secs(TTL as u64 + 5),
        "the old leader to act on its stale deadlines",
        || async {
            let node = cluster.node(old).ok()?;
            if node.last_log_index() > index_before {
                return Some("proposed an expiry that cannot commit");
            }
            // Its keeper dropped its deadlines (Raft refused the proposal or it stepped down).
            let keeper = cluster.lease_keeper(old).ok()?;
            (keeper.tracked() == 0).then_some("dropped its stale deadlines")
        },
    )
    .await?;
    info!(outcome, "--- step: old leader");
    // A keep-alive sent straight to the old leader is not acknowledged: it cannot confirm
    // its leadership with a quorum.
    let direct = keep_alive_once(&cluster.addr(old).to_string(), id).await;
    assert!(
        !matches!(direct, Ok(ttl) if ttl > 0),
        "the cut-off leader renewed: {direct:?}"
    );
    let mut m = etcd(&cluster, new).await?;
    assert_eq!(m.get("part/key", None).await?.count(), 1);

    info!("--- step: heal; the stale entry is discarded and the lease survives");
    cluster.heal();
    cluster.wait_converged(T).await?;
    let before = renewed.load(Ordering::SeqCst);
    wait_until(T, "keep-alives after healing", || async {
        (renewed.load(Ordering::SeqCst) >= before + 2).then_some(())
    })
    .await?;
    for n in cluster.running() {
        let c = etcd(&cluster, n).await?;
        assert_eq!(
            count_on(&c, "part/", 0).await?.0,
            1,
            "node {n} kept the key"
        );
    }
    let t = m.lease_time_to_live(id, None).await?;
    assert!(t.ttl() > 0, "the lease is alive: {}", t.ttl());
    stop.store(true, Ordering::SeqCst);
    task.await?;
    assert!(
        !lost.load(Ordering::SeqCst),
        "no keep-alive saw the lease gone"
    );
    cluster.shutdown().await;
    Ok(())
}
