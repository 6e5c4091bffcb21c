//! Process-level chaos (seconds, part of the ordinary suite): writers, compare-and-swap
//! incrementers and a resuming watcher run while a nemesis kills, restarts and isolates nodes.
//! Afterwards: every acknowledged write is present on every node; the CAS counter equals the
//! acknowledged increments (within the unknown outcomes); the watcher saw every counter value in
//! order with no gap or duplicate, and every acknowledged key.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use muster_tests::Cluster;
use tracing::info;

const CHAOS: Duration = Duration::from_secs(8);
const T: Duration = Duration::from_secs(20);
const COUNTER: &str = "chaos/counter";

fn endpoints(cluster: &Cluster) -> Vec<String> {
    cluster
        .ids()
        .into_iter()
        .map(|id| cluster.addr(id).to_string())
        .collect()
}

async fn client(eps: &[String]) -> anyhow::Result<etcd_client::Client> {
    let opts = etcd_client::ConnectOptions::new()
        .with_timeout(Duration::from_secs(3))
        .with_connect_timeout(Duration::from_millis(500));
    Ok(etcd_client::Client::connect(eps, Some(opts)).await?)
}

/// Puts unique keys until `stop`; returns the acknowledged ones.
async fn writer(eps: Vec<String>, w: usize, stop: Arc<AtomicBool>) -> anyhow::Result<Vec<String>> {
    let mut c = client(&eps).await?;
    let mut acked = Vec::new();
    for i in 0..100_000 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let key = format!("chaos/w{w}/{i:06}");
        if c.put(key.clone(), "v", None).await.is_ok() {
            acked.push(key);
        }
    }
    Ok(acked)
}

/// CAS-increments the counter until `stop`; returns (acknowledged increments, unknown outcomes).
async fn incrementer(eps: Vec<String>, stop: Arc<AtomicBool>) -> anyhow::Result<(u64, u64)> {
    let mut c = client(&eps).await?;
    let (mut acked, mut unknown) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        let Ok(r) = c.get(COUNTER, None).await else {
            continue;
        };
        let cur: u64 = r
            .kvs()
            .first()
            .and_then(|kv| kv.value_str().ok()?.parse().ok())
            .unwrap_or(0);
        let cmp = if cur == 0 {
            Compare::create_revision(COUNTER, CompareOp::Equal, 0)
        } else {
            Compare::value(COUNTER, CompareOp::Equal, cur.to_string())
        };
        let txn =
            Txn::new()
                .when([cmp])
                .and_then([TxnOp::put(COUNTER, (cur + 1).to_string(), None)]);
        match c.txn(txn).await {
            Ok(t) if t.succeeded() => acked += 1,
            Ok(_) => {}
            Err(_) => unknown += 1,
        }
    }
    Ok((acked, unknown))
}

/// Watches `chaos/` from revision 1, resuming on another node from last revision + 1 when its
/// stream breaks; returns every (revision, key, value) seen.
async fn watcher(
    eps: Vec<String>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<(i64, String, String)>> {
    let mut seen = Vec::new();
    let mut next_rev = 1;
    let mut ep = 0;
    let deadline = Instant::now() + CHAOS + T;
    while Instant::now() < deadline {
        let Ok(mut c) = client(&eps[ep % eps.len()..=ep % eps.len()]).await else {
            ep += 1;
            continue;
        };
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(next_rev);
        let Ok(mut stream) = c.watch("chaos/", Some(opts)).await else {
            ep += 1;
            continue;
        };
        loop {
            let msg = match tokio::time::timeout(Duration::from_secs(1), stream.message()).await {
                Err(_) if stop.load(Ordering::Relaxed) => return Ok(seen),
                Err(_) => continue,
                Ok(Ok(Some(m))) => m,
                Ok(_) => break,
            };
            anyhow::ensure!(
                msg.compact_revision() == 0,
                "history was compacted under the watcher"
            );
            for e in msg.events() {
                let Some(kv) = e.kv() else { continue };
                if e.event_type() == EventType::Put {
                    seen.push((
                        kv.mod_revision(),
                        kv.key_str()?.to_string(),
                        kv.value_str()?.to_string(),
                    ));
                }
                next_rev = kv.mod_revision() + 1;
            }
        }
        ep += 1;
    }
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_loses_no_acknowledged_write_and_no_watch_event() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let eps = endpoints(&cluster);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|w| tokio::spawn(writer(eps.clone(), w, stop.clone())))
        .collect();
    let inc = tokio::spawn(incrementer(eps.clone(), stop.clone()));
    let watch = tokio::spawn(watcher(eps.clone(), stop.clone()));

    // The nemesis. Holding a fault for a while IS the scenario, hence the sleeps below.
    let mut faults = Vec::new();
    let started = Instant::now();
    let mut round = 0u64;
    while started.elapsed() < CHAOS {
        round += 1;
        let leader = cluster.wait_for_leader(T).await?;
        let follower = cluster
            .ids()
            .into_iter()
            .find(|id| *id != leader)
            .unwrap_or(1);
        match round % 3 {
            0 => {
                info!(leader, "--- nemesis: kill the leader");
                cluster.kill(leader).await?;
                tokio::time::sleep(Duration::from_millis(800)).await;
                cluster.restart(leader).await?;
                faults.push("kill leader");
            }
            1 => {
                info!(follower, "--- nemesis: isolate a follower");
                cluster.isolate(follower)?;
                tokio::time::sleep(Duration::from_millis(800)).await;
                cluster.heal();
                faults.push("isolate follower");
            }
            _ => {
                info!(leader, "--- nemesis: isolate the leader");
                cluster.isolate(leader)?;
                tokio::time::sleep(Duration::from_millis(1500)).await;
                cluster.heal();
                faults.push("isolate leader");
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut acked_keys = BTreeSet::new();
    for w in writers {
        acked_keys.extend(w.await??);
    }
    let (acked_incs, unknown_incs) = inc.await??;
    cluster.wait_converged(T).await?;
    let seen = watch.await??;
    info!(
        faults = faults.len(),
        writes = acked_keys.len(),
        acked_incs,
        unknown_incs,
        events = seen.len(),
        "--- verify"
    );
    assert!(
        !faults.is_empty() && acked_keys.len() > 10 && acked_incs > 0,
        "the workload made progress"
    );

    // Every acknowledged key is on every node.
    let mut final_counter = None;
    for id in cluster.ids() {
        let mut c = client(&[cluster.addr(id).to_string()]).await?;
        let r = c
            .get(
                "chaos/w",
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_serializable(),
                ),
            )
            .await?;
        let present: BTreeSet<String> = r
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok().map(String::from))
            .collect();
        let missing: Vec<_> = acked_keys.difference(&present).collect();
        assert!(
            missing.is_empty(),
            "node {id} lost acknowledged writes: {missing:?}"
        );
        let v = c
            .get(COUNTER, Some(GetOptions::new().with_serializable()))
            .await?;
        let counter: u64 = v
            .kvs()
            .first()
            .and_then(|kv| kv.value_str().ok()?.parse().ok())
            .unwrap_or(0);
        assert!(
            final_counter.is_none_or(|f| f == counter),
            "nodes disagree on the counter"
        );
        final_counter = Some(counter);
    }
    let counter = final_counter.unwrap_or(0);
    assert!(
        acked_incs <= counter && counter <= acked_incs + unknown_incs,
        "counter {counter} vs {acked_incs} acknowledged + {unknown_incs} unknown increments"
    );

    // The watcher: strictly ordered revisions per key, no duplicates, every counter value once
    // in order, every acknowledged key.
    let revs: Vec<(i64, &str)> = seen.iter().map(|(r, k, _)| (*r, k.as_str())).collect();
    assert!(
        revs.windows(2).all(|w| w[0] < w[1]),
        "events are ordered and unique"
    );
    let counter_values: Vec<u64> = seen
        .iter()
        .filter(|(_, k, _)| k == COUNTER)
        .filter_map(|(_, _, v)| v.parse().ok())
        .collect();
    assert_eq!(
        counter_values,
        (1..=counter).collect::<Vec<_>>(),
        "every counter value, in order, once"
    );
    let watched: BTreeSet<&str> = seen.iter().map(|(_, k, _)| k.as_str()).collect();
    assert!(
        acked_keys.iter().all(|k| watched.contains(k.as_str())),
        "the watcher saw every acknowledged key"
    );
    cluster.shutdown().await;
    Ok(())
}
