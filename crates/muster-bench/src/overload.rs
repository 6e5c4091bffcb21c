//! `overload`: many more concurrent clients than a cluster should serve at once, to measure
//! its back-pressure: how many calls succeed, are refused (ResourceExhausted "etcdserver: too
//! many requests"), fail Unavailable or reach their deadline, how long each kind took, whether
//! the leader and term held, the nodes' peak memory, and whether every acknowledged put is
//! stored afterwards.
//!
//! Each client runs a closed loop (one call in flight) for `--secs`, sending puts of distinct
//! keys (and `--read-percent` linearizable gets) with a deadline (`grpc-timeout`); clients
//! share `--connections` HTTP/2 connections, spread over the endpoints. A call unanswered
//! [`HANG_SLACK`] past its deadline counts as hung. Bounded in time by `--secs` and in count
//! by `--max-calls`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use muster_proto::etcdserverpb::kv_client::KvClient;
use muster_proto::etcdserverpb::{PutRequest, RangeRequest};
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;

use crate::common::{
    channels, find_leader, proc_status_kib, progress_with, run_id, status, worker_channels,
};
use crate::stats::Samples;

/// How long past its own deadline a call may stay unanswered before it counts as hung.
const HANG_SLACK: Duration = Duration::from_secs(5);

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct Overload {
    /// Concurrent clients, each with one call in flight.
    #[arg(long, default_value_t = 2000)]
    pub clients: usize,
    /// HTTP/2 connections the clients share, spread round-robin over the endpoints.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// How long the load runs.
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// Stop after this many calls in all, even before `--secs`.
    #[arg(long, default_value_t = 2_000_000)]
    pub max_calls: usize,
    /// Each call's deadline, sent to the server as `grpc-timeout`.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Percent of calls that are linearizable gets; the rest are puts.
    #[arg(long, default_value_t = 0)]
    pub read_percent: u8,
    #[arg(long, default_value_t = 128)]
    pub value_size: usize,
    /// Comma-separated server pids: their peak RSS (VmHWM) and RSS are reported after the run.
    #[arg(long, value_delimiter = ',')]
    pub pid: Vec<u32>,
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Ok,
    /// ResourceExhausted: refused by a bound.
    TooMany,
    Unavailable,
    /// The call's deadline passed (DeadlineExceeded, or tonic's Cancelled "Timeout expired").
    Deadline,
    /// Unanswered well past its deadline.
    Hung,
    Other,
}

impl Outcome {
    fn of(r: &Result<(), tonic::Status>) -> Outcome {
        match r {
            Ok(()) => Outcome::Ok,
            Err(s) => match s.code() {
                Code::ResourceExhausted => Outcome::TooMany,
                Code::Unavailable => Outcome::Unavailable,
                Code::DeadlineExceeded | Code::Cancelled => Outcome::Deadline,
                _ => Outcome::Other,
            },
        }
    }

    fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::TooMany => "resource_exhausted",
            Outcome::Unavailable => "unavailable",
            Outcome::Deadline => "deadline",
            Outcome::Hung => "hung",
            Outcome::Other => "other",
        }
    }
}

/// One client's results: latencies per outcome, acknowledged puts, and a few messages.
#[derive(Default)]
struct ClientResult {
    latencies: BTreeMap<Outcome, Vec<Duration>>,
    acked_puts: usize,
    /// The first message seen per outcome (what the server said).
    messages: BTreeMap<Outcome, String>,
}

/// Leader and term as every endpoint reports them (`null` for one that did not answer).
async fn cluster_view(chans: &[Channel], endpoints: &[String]) -> Value {
    let mut out = Vec::with_capacity(chans.len());
    for (ch, ep) in chans.iter().zip(endpoints) {
        out.push(match status(ch.clone()).await {
            Ok(s) => json!({
                "endpoint": ep, "member_id": s.member_id, "leader": s.leader, "term": s.raft_term,
            }),
            Err(e) => json!({"endpoint": ep, "error": e.to_string()}),
        });
    }
    Value::Array(out)
}

/// The (leader, term) pairs the endpoints that answered agree on, if they all agree.
fn agreed(view: &Value) -> Option<(u64, u64)> {
    let mut seen = None;
    for v in view.as_array()? {
        let pair = (v["leader"].as_u64()?, v["term"].as_u64()?);
        match seen {
            None => seen = Some(pair),
            Some(p) if p != pair => return None,
            _ => {}
        }
    }
    seen
}

pub async fn bench_overload(
    endpoints: &[String],
    o: Overload,
    deadline: Instant,
) -> anyhow::Result<Value> {
    anyhow::ensure!(
        o.clients > 0 && o.connections > 0,
        "no clients or connections"
    );
    let status_chans = channels(endpoints).await?;
    let before = cluster_view(&status_chans, endpoints).await;
    let conns = worker_channels(endpoints, o.connections).await?;
    let prefix = format!("overload/{}/", run_id());
    let timeout = Duration::from_millis(o.timeout_ms);
    let end = (Instant::now() + Duration::from_secs(o.secs)).min(deadline);
    let run = Arc::new(Run {
        o: o.clone(),
        prefix: prefix.clone(),
        timeout,
        end,
        calls: AtomicUsize::new(0),
        ok: AtomicUsize::new(0),
    });
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(o.clients);
    for c in 0..o.clients {
        let kv = KvClient::new(conns[c % conns.len()].clone());
        tasks.push(tokio::spawn(client_loop(kv, c, run.clone())));
    }
    let progress = {
        let run = run.clone();
        progress_with(move || {
            format!(
                "{} calls, {} ok",
                run.calls.load(Ordering::Relaxed),
                run.ok.load(Ordering::Relaxed)
            )
        })
    };
    let mut merged = ClientResult::default();
    for t in tasks {
        let r = t.await?;
        merged.acked_puts += r.acked_puts;
        for (outcome, lat) in r.latencies {
            merged.latencies.entry(outcome).or_default().extend(lat);
        }
        for (outcome, m) in r.messages {
            merged.messages.entry(outcome).or_insert(m);
        }
    }
    let wall = started.elapsed();
    drop(progress);
    let after = cluster_view(&status_chans, endpoints).await;
    let stored = stored_keys(endpoints, &prefix).await;
    let mut outcomes = serde_json::Map::new();
    let mut total = 0;
    for (outcome, lat) in merged.latencies {
        total += lat.len();
        let mut v = Samples::new(lat, wall).json();
        if let Some(m) = merged.messages.get(&outcome) {
            v["message"] = json!(m);
        }
        outcomes.insert(outcome.name().to_string(), v);
    }
    let mut memory = Vec::with_capacity(o.pid.len());
    for &pid in &o.pid {
        memory.push(json!({
            "pid": pid,
            "peak_rss_mib": proc_status_kib(pid, "VmHWM")? as f64 / 1024.0,
            "rss_mib": proc_status_kib(pid, "VmRSS")? as f64 / 1024.0,
        }));
    }
    let (b, a) = (agreed(&before), agreed(&after));
    Ok(json!({
        "what": "overload",
        "clients": o.clients, "connections": o.connections, "secs": wall.as_secs_f64(),
        "timeout_ms": o.timeout_ms, "read_percent": o.read_percent,
        "calls": total,
        "outcomes": outcomes,
        "acked_puts": merged.acked_puts,
        "stored_keys": stored.as_ref().map(|n| json!(n)).unwrap_or_else(|e| json!(e.to_string())),
        "leader_term_before": b.map(|(l, t)| json!({"leader": l, "term": t})),
        "leader_term_after": a.map(|(l, t)| json!({"leader": l, "term": t})),
        "leader_or_term_changed": b.is_none() || a.is_none() || b != a,
        "before": before, "after": after,
        "memory": memory,
    }))
}

/// What every client of one run shares.
struct Run {
    o: Overload,
    prefix: String,
    timeout: Duration,
    end: Instant,
    /// Calls started, by all clients.
    calls: AtomicUsize,
    /// Calls that succeeded, by all clients.
    ok: AtomicUsize,
}

async fn client_loop(mut kv: KvClient<Channel>, client: usize, run: Arc<Run>) -> ClientResult {
    let Run {
        o,
        prefix,
        timeout,
        end,
        calls,
        ok,
    } = &*run;
    let (timeout, end) = (*timeout, *end);
    let mut r = ClientResult::default();
    let value = vec![b'v'; o.value_size];
    for seq in 0.. {
        if Instant::now() >= end || calls.fetch_add(1, Ordering::Relaxed) >= o.max_calls {
            break;
        }
        let key = format!("{prefix}{client:05}/{seq:08}").into_bytes();
        let is_read = (client + seq) % 100 < usize::from(o.read_percent);
        let t = Instant::now();
        let call = async {
            if is_read {
                let mut req = tonic::Request::new(RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                });
                req.set_timeout(timeout);
                kv.range(req).await.map(|_| ())
            } else {
                let mut req = tonic::Request::new(PutRequest {
                    key: key.clone(),
                    value: value.clone(),
                    ..Default::default()
                });
                req.set_timeout(timeout);
                kv.put(req).await.map(|_| ())
            }
        };
        let (outcome, message) = match tokio::time::timeout(timeout + HANG_SLACK, call).await {
            Err(_) => (Outcome::Hung, None),
            Ok(res) => (
                Outcome::of(&res),
                res.err().map(|s| s.message().to_string()),
            ),
        };
        r.latencies.entry(outcome).or_default().push(t.elapsed());
        if let Some(m) = message {
            r.messages.entry(outcome).or_insert(m);
        }
        if outcome == Outcome::Ok {
            ok.fetch_add(1, Ordering::Relaxed);
            if !is_read {
                r.acked_puts += 1;
            }
        }
    }
    r
}

/// Keys stored under `prefix`, counted on the leader (linearizable).
async fn stored_keys(endpoints: &[String], prefix: &str) -> anyhow::Result<i64> {
    let (i, _) = find_leader(endpoints, Duration::from_secs(10)).await?;
    let ch = channels(&endpoints[i..=i]).await?;
    let mut kv = KvClient::new(ch.into_iter().next().context("no channel")?);
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let r = kv
        .range(RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: end,
            count_only: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(r.count)
}
