//! Process-level chaos (seconds, part of the ordinary suite): writers, compare-and-swap
//! incrementers, a resuming watcher and recorded register clients run while a nemesis kills,
//! restarts and isolates nodes. Afterwards: every acknowledged write is present on every node;
//! the CAS counter equals the acknowledged increments (within the unknown outcomes); the watcher
//! saw every counter value in order with no gap or duplicate, and every acknowledged key; the
//! registers' history is linearizable (the docker chaos checker's own checker, per key).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use etcd_client::GetOptions;
use muster_chaos::linearizability::{self, Budget};
use muster_chaos::workload::{self, counter, registers, watcher, COUNTER};
use muster_tests::Cluster;
use tokio_util::sync::CancellationToken;
use tracing::info;

const CHAOS: Duration = Duration::from_secs(8);
const T: Duration = Duration::from_secs(20);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_loses_no_acknowledged_write_and_no_watch_event() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let eps = endpoints(&cluster);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|w| tokio::spawn(writer(eps.clone(), w, stop.clone())))
        .collect();
    let settings = workload::Settings {
        endpoints: eps.clone(),
        op_timeout: Duration::from_secs(3),
        max_ops: 1_000_000,
    };
    // The docker chaos checker's CAS incrementer: one client, so acked ≤ final ≤ acked+unknown.
    let stop_inc = CancellationToken::new();
    let inc = tokio::spawn(counter::run(settings.clone(), stop_inc.clone()));
    // The resuming watcher of the docker chaos checker; it runs until it has seen the final
    // revision (sent once the cluster converged), with this bound.
    let (target_tx, target_rx) = tokio::sync::watch::channel(None);
    let watch_deadline = Instant::now() + CHAOS + T * 3;
    let watch = tokio::spawn(watcher::run(settings.clone(), target_rx, watch_deadline));
    // Register clients give up sooner: more operations, and more unknown outcomes, per fault.
    let stop_registers = CancellationToken::new();
    let lin_settings = workload::Settings {
        op_timeout: Duration::from_secs(1),
        ..settings
    };
    let (regs_running, regs_started) = tokio::sync::oneshot::channel();
    let regs = tokio::spawn(registers::run(
        lin_settings,
        3,
        4,
        stop_registers.clone(),
        Some(regs_running),
    ));
    // Faults while the register clients run: wait until their initial reads are done (on a
    // loaded machine that took the whole fault phase, leaving nothing to check).
    tokio::time::timeout(T, regs_started)
        .await
        .context("register clients did not start")?
        .context("register workload ended before its clients started")?;

    // The nemesis. Holding a fault for a while IS the scenario, hence the sleeps below.
    let mut faults = Vec::new();
    let started = Instant::now();
    let mut round = 0u64;
    while started.elapsed() < CHAOS {
        round += 1;
        let leader = cluster.wait_for_leader(T).await?;
        let follower = cluster.follower_of(leader);
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
    stop_registers.cancel();
    stop_inc.cancel();
    let mut acked_keys = BTreeSet::new();
    for w in writers {
        acked_keys.extend(w.await??);
    }
    let incs = inc.await??;
    let (acked_incs, unknown_incs) = (incs.acked, incs.unknown);
    let histories = regs.await??;
    cluster.wait_converged(T).await?;
    let final_rev = client(&eps)
        .await?
        .get(COUNTER, None)
        .await?
        .header()
        .map_or(0, |h| h.revision());
    let _ = target_tx.send(Some(final_rev));
    let watched = watch.await??;
    assert!(
        watched.caught_up && !watched.compacted,
        "the watcher reached revision {final_rev} (it stopped at {}) on uncompacted history",
        watched.next_revision - 1
    );
    let seen: Vec<(i64, String, String)> = watched
        .events
        .into_iter()
        .filter(|e| !e.delete)
        .map(|e| (e.revision, e.key, e.value))
        .collect();
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
    // The registers: linearizable, every key decided.
    let lin =
        tokio::task::spawn_blocking(move || linearizability::check(&histories, &Budget::default()))
            .await?;
    info!(
        ok = lin.ops_ok(),
        unknown = lin.ops_unknown(),
        keys = lin.keys.len(),
        steps = lin.steps(),
        ms = lin.elapsed.as_millis() as u64,
        "--- linearizability"
    );
    assert!(
        lin.violations() == 0 && lin.undecided() == 0,
        "{}",
        lin.problems().join("\n")
    );
    assert!(
        lin.keys.len() == 4 && lin.ops_ok() > 10,
        "the register clients made progress: {} keys, {} ops ok, {} unknown",
        lin.keys.len(),
        lin.ops_ok(),
        lin.ops_unknown()
    );
    cluster.shutdown().await;
    Ok(())
}
