//! Failover benchmarks.
//!
//! - `failover`: an in-process 3-node Muster cluster (testkit); kills the leader repeatedly and
//!   times a new agreed leader and the first acknowledged write.
//! - `failover-external`: any running 3-node cluster reached through the etcd API (etcd or
//!   Muster). Finds the leader with Maintenance.Status, SIGKILLs (or, with `--signal term`,
//!   SIGTERMs: a graceful stop) its process while writers put
//!   continuously through the surviving endpoints, and measures the longest gap between
//!   acknowledged writes, kill → new leader, kill → first write sent after the kill and
//!   acknowledged; then reads back every acknowledged key (none may be lost). The killed node
//!   stays down: the caller restarts it or tears the cluster down.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use muster_proto::etcdserverpb::kv_client::KvClient;
use muster_proto::etcdserverpb::{PutRequest, RangeRequest};
use muster_testkit::TestCluster;
use muster_types::prefix_end;
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::common::{channels, find_leader, progress_with, run_id, status, worker_channels};
use crate::stats::Samples;

/// `failover`: `rounds` leader kills in an in-process cluster.
pub async fn bench_failover(rounds: usize, production_timing: bool) -> anyhow::Result<Value> {
    let mut cluster = TestCluster::start_with(3, |c| {
        if production_timing {
            c.raft = muster_server::config::RaftTiming::default();
        }
    })
    .await?;
    let mut elect = Vec::new();
    let mut write = Vec::new();
    for round in 0..rounds {
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
        let survivor = cluster
            .ids()
            .into_iter()
            .find(|id| *id != leader)
            .context("no survivor")?;
        let mut client =
            etcd_client::Client::connect([cluster.addr(survivor).to_string()], None).await?;
        client.put("failover/warmup", "x", None).await?;
        let killed = Instant::now();
        cluster.kill(leader).await?;
        cluster.wait_for_leader(Duration::from_secs(30)).await?;
        elect.push(killed.elapsed());
        // The first write that succeeds after the kill (the node waits for a leader itself).
        client.put(format!("failover/{round}"), "x", None).await?;
        write.push(killed.elapsed());
        eprintln!(
            "  round {}: leader {leader} killed; elected in {:?}, write ok after {:?}",
            round + 1,
            elect[round],
            write[round]
        );
        cluster.restart(leader).await?;
        cluster.wait_converged(Duration::from_secs(30)).await?;
    }
    cluster.shutdown().await;
    Ok(json!({
        "what": "failover", "rounds": rounds, "production_timing": production_timing,
        "kill_to_leader": Samples::new(elect, Duration::ZERO).json(),
        "kill_to_write": Samples::new(write, Duration::ZERO).json(),
    }))
}

/// Parameters of `failover-external`.
#[derive(Debug, Clone, Copy)]
pub struct External {
    /// Concurrent writers (each its own connection to a surviving endpoint).
    pub writers: usize,
    /// Writing before the kill.
    pub before: Duration,
    /// Writing after the first post-kill write is acknowledged.
    pub after: Duration,
    /// A put unanswered after this long counts as failed and the writer moves on.
    pub request_timeout: Duration,
    /// How the leader is stopped: SIGKILL (a crash) or SIGTERM (an operator's stop; musterd
    /// hands its leadership over first).
    pub signal: StopSignal,
}

/// The signal `failover-external` stops the leader with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StopSignal {
    Kill,
    Term,
}

impl StopSignal {
    fn flag(self) -> &'static str {
        match self {
            StopSignal::Kill => "-KILL",
            StopSignal::Term => "-TERM",
        }
    }
}

/// Pause after a failed put, so a refusing node does not turn a writer into a busy loop.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// State the writers share with the controller.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    kill_at: OnceLock<Instant>,
    /// Set once a put sent after the kill is acknowledged.
    recovered: AtomicBool,
    acked: AtomicUsize,
    errors: AtomicUsize,
}

struct Ack {
    sent: Instant,
    acked: Instant,
    key: Vec<u8>,
}

/// Puts distinct keys `<prefix><w>/<i>` until stopped or the deadline; returns the acks.
async fn writer(
    ch: Channel,
    prefix: String,
    shared: Arc<Shared>,
    request_timeout: Duration,
    deadline: Instant,
) -> Vec<Ack> {
    let mut kv = KvClient::new(ch);
    let mut acks = Vec::new();
    let mut i = 0usize;
    while !shared.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let key = format!("{prefix}{i:08}").into_bytes();
        i += 1;
        let sent = Instant::now();
        let put = kv.put(PutRequest {
            key: key.clone(),
            value: b"x".to_vec(),
            ..Default::default()
        });
        match tokio::time::timeout(request_timeout, put).await {
            Ok(Ok(_)) => {
                let acked = Instant::now();
                if shared.kill_at.get().is_some_and(|k| sent >= *k) {
                    shared.recovered.store(true, Ordering::Relaxed);
                }
                shared.acked.fetch_add(1, Ordering::Relaxed);
                acks.push(Ack { sent, acked, key });
            }
            Ok(Err(_)) | Err(_) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
    acks
}

/// Polls the survivors' Status until they all name one new leader (not `old`); when.
async fn wait_new_leader(survivors: Vec<Channel>, old: u64, deadline: Instant) -> Option<Instant> {
    while Instant::now() < deadline {
        let mut leaders = HashSet::new();
        for ch in &survivors {
            leaders.insert(status(ch.clone()).await.map_or(0, |s| s.leader));
        }
        if leaders.len() == 1 && !leaders.contains(&0) && !leaders.contains(&old) {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Every key under `prefix`, read linearizably in pages.
async fn read_keys(ch: Channel, prefix: &[u8]) -> anyhow::Result<HashSet<Vec<u8>>> {
    let mut kv = KvClient::new(ch);
    let end = prefix_end(prefix);
    let mut start = prefix.to_vec();
    let mut keys = HashSet::new();
    loop {
        let r = kv
            .range(RangeRequest {
                key: start.clone(),
                range_end: end.clone(),
                limit: 1000,
                keys_only: true,
                ..Default::default()
            })
            .await
            .context("Range (read-back)")?
            .into_inner();
        let Some(last) = r.kvs.last() else { break };
        start = last.key.clone();
        start.push(0);
        keys.extend(r.kvs.into_iter().map(|kv| kv.key));
        if !r.more {
            break;
        }
    }
    Ok(keys)
}

/// Sends `signal` to `pid`.
async fn kill(pid: u32, signal: StopSignal) -> anyhow::Result<()> {
    let st = tokio::process::Command::new("kill")
        .args([signal.flag(), &pid.to_string()])
        .status()
        .await
        .context("running kill")?;
    anyhow::ensure!(st.success(), "kill {} {pid} failed ({st})", signal.flag());
    Ok(())
}

fn ms_since(t: Option<Instant>, since: Instant) -> Value {
    t.map_or(Value::Null, |t| {
        json!(t.saturating_duration_since(since).as_secs_f64() * 1000.0)
    })
}

/// `failover-external`: `pids[i]` is the process serving `endpoints[i]`.
pub async fn bench_failover_external(
    endpoints: &[String],
    pids: &[u32],
    cfg: External,
    deadline: Instant,
) -> anyhow::Result<Value> {
    anyhow::ensure!(
        pids.len() == endpoints.len() && endpoints.len() >= 3,
        "need one pid per endpoint and at least 3 nodes (got {} endpoints, {} pids)",
        endpoints.len(),
        pids.len()
    );
    let (li, old) = find_leader(endpoints, Duration::from_secs(10)).await?;
    let survivors: Vec<String> = (0..endpoints.len())
        .filter(|&i| i != li)
        .map(|i| endpoints[i].clone())
        .collect();
    eprintln!(
        "leader: {} (pid {}, member {:x}); {} writers on {survivors:?}",
        endpoints[li], pids[li], old.member_id, cfg.writers
    );

    let prefix = format!("bench/failover/{}/", run_id());
    let shared = Arc::new(Shared::default());
    let mut tasks = Vec::new();
    for (w, ch) in worker_channels(&survivors, cfg.writers.max(1))
        .await?
        .into_iter()
        .enumerate()
    {
        tasks.push(tokio::spawn(writer(
            ch,
            format!("{prefix}{w:03}/"),
            shared.clone(),
            cfg.request_timeout,
            deadline,
        )));
    }
    let progress = {
        let shared = shared.clone();
        progress_with(move || {
            format!(
                "{} writes acknowledged, {} failed",
                shared.acked.load(Ordering::Relaxed),
                shared.errors.load(Ordering::Relaxed)
            )
        })
    };

    tokio::time::sleep_until(deadline.min(Instant::now() + cfg.before).into()).await;
    kill(pids[li], cfg.signal).await?;
    // From when `kill` has returned: the signal is pending (after SIGKILL the leader runs no
    // more code; after SIGTERM it hands its leadership over, then stops). Writes sent before
    // that but answered after are not "after the kill".
    let kill_at = Instant::now();
    let _ = shared.kill_at.set(kill_at);
    eprintln!(
        "stopped the leader (pid {}, {})",
        pids[li],
        cfg.signal.flag()
    );
    let elected = tokio::spawn(wait_new_leader(
        channels(&survivors).await?,
        old.leader,
        deadline,
    ));
    while !shared.recovered.load(Ordering::Relaxed) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep_until(deadline.min(Instant::now() + cfg.after).into()).await;
    shared.stop.store(true, Ordering::Relaxed);
    let mut acks = Vec::new();
    for t in tasks {
        acks.extend(t.await.context("writer task")?);
    }
    drop(progress);
    let new_leader_at = elected.await.context("leader poller")?;

    // Every acknowledged write must be readable on the surviving majority.
    let present = read_keys(
        channels(&survivors[..1]).await?.remove(0),
        prefix.as_bytes(),
    )
    .await?;
    let lost = acks.iter().filter(|a| !present.contains(&a.key)).count();

    let mut acked_at: Vec<Instant> = acks.iter().map(|a| a.acked).collect();
    acked_at.sort();
    let max_gap = acked_at
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let first_write = acks
        .iter()
        .filter(|a| a.sent >= kill_at)
        .map(|a| a.acked)
        .min();
    let before = acks.iter().filter(|a| a.acked < kill_at).count();
    Ok(json!({
        "what": "failover-external", "writers": cfg.writers,
        "killed": {"endpoint": endpoints[li], "pid": pids[li], "member_id": format!("{:x}", old.member_id), "signal": cfg.signal.flag()},
        "new_leader_ms": ms_since(new_leader_at, kill_at),
        "first_write_ms": ms_since(first_write, kill_at),
        "max_gap_ms": max_gap.as_secs_f64() * 1000.0,
        "acked": acks.len(), "acked_before_kill": before,
        "per_sec_before_kill": before as f64 / cfg.before.as_secs_f64().max(0.001),
        "failed_requests": shared.errors.load(Ordering::Relaxed),
        "lost": lost,
    }))
}
