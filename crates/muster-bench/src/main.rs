//! `muster-bench`: load generator and measurements for Muster and, through the same etcd v3
//! API (the raw etcd protos of `muster-proto`), for etcd, so both are measured by one code path.
//!
//! Subcommands (every one prints one result, as text or with `--json` as one JSON object):
//! - `put`, `range`, `txn`: KV puts, single-key gets (linearizable or serializable) of
//!   preloaded keys, compare-and-swap transactions.
//! - `lease-grant`: LeaseGrant throughput and latency (the leases are revoked afterwards).
//! - `keepalive`: N leases kept alive over ONE LeaseKeepAlive stream, R rounds.
//! - `register-kv`: service registration the etcd way (lease grant + put with the lease,
//!   prefix get to discover, revoke to deregister); runs against both systems.
//! - `register`: Muster's own Registry.Register (Muster only).
//! - `watch-latency`: put-ack → receipt latency at W watchers; server memory per watcher.
//! - `failover-external`: SIGKILL the leader of a running cluster under write load; the write
//!   gap, recovery times and lost acknowledged writes.
//! - `failover`: an in-process 3-node Muster cluster; leader kills and recovery times.
//! - `overload`: thousands of concurrent clients at once; counts per outcome (ok, refused,
//!   unavailable, deadline), latencies, leader/term before and after, peak RSS.
//! - `footprint`: VmRSS of server processes and disk use of their data directories.
//! - `report`: the side-by-side markdown table of a `scripts/bench-vs-etcd.sh` run.
//!
//! Every simulated client has its own connection; clients are spread round-robin over the
//! endpoints. Every loop is bounded in count and time (`--max-secs`); progress goes to stderr
//! once a second.
//!
//! # Layout
//! - `main.rs`: the command line.
//! - `load.rs`: the closed-loop driver (W workers, one request in flight each).
//! - `kv.rs`, `lease.rs`, `registry.rs`, `watch.rs`, `failover.rs`, `overload.rs`: the
//!   benchmarks.
//! - `footprint.rs`, `report.rs`: resource use and the comparison table.
//! - `common.rs`: connections, the leader lookup, keys, progress; `stats.rs`: percentiles and
//!   result output.

mod common;
mod failover;
mod footprint;
mod kv;
mod lease;
mod load;
mod overload;
mod registry;
mod report;
mod stats;
mod watch;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "muster-bench",
    about = "Benchmarks for Muster and etcd through the same etcd v3 API"
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
    /// Print the result as one JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Comma-separated endpoints (host:port).
    #[arg(
        long,
        global = true,
        env = "MUSTER_ENDPOINTS",
        default_value = "127.0.0.1:2379"
    )]
    endpoints: String,
    /// Put the current leader first in the endpoint list (found with Maintenance.Status), so a
    /// single client, the watch writer and the keep-alive stream talk to the leader.
    /// failover-external ignores it (it finds the leader itself).
    #[arg(long, global = true)]
    leader_first: bool,
    /// Stop every loop after this many seconds even if its count is not reached.
    #[arg(long, global = true, default_value_t = 120)]
    max_secs: u64,
}

/// How much load: total requests and concurrent clients.
#[derive(clap::Args, Clone, Copy)]
struct Load {
    /// Total requests.
    #[arg(long, default_value_t = 2000)]
    count: usize,
    /// Concurrent clients, each with its own connection and one request in flight.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
}

#[derive(Subcommand)]
enum Cmd {
    /// Put keys through the etcd KV API.
    Put {
        #[command(flatten)]
        load: Load,
        #[command(flatten)]
        shape: kv::Shape,
    },
    /// Single-key gets of preloaded keys (`--keys` of them, put first).
    Range {
        #[command(flatten)]
        load: Load,
        #[command(flatten)]
        shape: kv::Shape,
        /// Serializable reads (served by any node from its own state) instead of linearizable.
        #[arg(long)]
        serializable: bool,
    },
    /// Compare-and-swap transactions: mod_revision(key) == last seen → put, else get.
    Txn {
        #[command(flatten)]
        load: Load,
        #[command(flatten)]
        shape: kv::Shape,
    },
    /// LeaseGrant throughput and latency.
    LeaseGrant {
        #[command(flatten)]
        load: Load,
        #[arg(long, default_value_t = 60)]
        ttl: i64,
        /// Leave the leases (default: revoke them afterwards, timed separately).
        #[arg(long)]
        keep: bool,
    },
    /// Grant N leases (TTL 60), then keep them all alive over ONE LeaseKeepAlive stream on
    /// the first endpoint.
    Keepalive {
        #[arg(long, default_value_t = 1000)]
        leases: usize,
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Clients for the setup grants and cleanup revokes.
        #[arg(long, default_value_t = 32)]
        grant_concurrency: usize,
    },
    /// Service registration the etcd way: LeaseGrant + Put with the lease per instance, then
    /// prefix gets per service (discover), then LeaseRevoke (deregister).
    RegisterKv {
        #[command(flatten)]
        load: Load,
        /// Instances are spread over this many services.
        #[arg(long, default_value_t = 100)]
        services: usize,
        /// Discover calls after the registrations.
        #[arg(long, default_value_t = 2000)]
        discovers: usize,
        #[arg(long, default_value_t = 60)]
        ttl: i64,
    },
    /// Muster's Registry.Register: persistent instances with distinct instance ids.
    Register {
        #[command(flatten)]
        load: Load,
        #[arg(long, default_value = "bench-svc")]
        service: String,
    },
    /// Put-ack → receipt latency at W prefix watchers (streams spread over the endpoints).
    WatchLatency {
        #[arg(long, default_value_t = 1)]
        watchers: usize,
        #[arg(long, default_value_t = 200)]
        events: usize,
        /// Watchers multiplexed on one Watch stream.
        #[arg(long, default_value_t = 100)]
        per_stream: usize,
        #[arg(long, default_value_t = 128)]
        value_size: usize,
        /// Comma-separated server pids: VmRSS is read before and after creating the watchers
        /// (give every node's pid to cover watchers on all endpoints).
        #[arg(long, alias = "musterd-pid", value_delimiter = ',')]
        pid: Vec<u32>,
    },
    /// SIGKILL the leader of a running cluster while clients write through the other nodes.
    FailoverExternal {
        /// Comma-separated pids, one per endpoint, in the same order.
        #[arg(long, value_delimiter = ',', required = true)]
        pid: Vec<u32>,
        /// Concurrent writers.
        #[arg(long, default_value_t = 16)]
        writers: usize,
        /// Milliseconds of writing before the kill.
        #[arg(long, default_value_t = 2000)]
        before_ms: u64,
        /// Milliseconds of writing after the first write acknowledged after the kill.
        #[arg(long, default_value_t = 2000)]
        after_ms: u64,
        /// A put unanswered after this many milliseconds fails and the writer sends the next.
        #[arg(long, default_value_t = 1000)]
        request_timeout_ms: u64,
        /// How to stop the leader: kill (SIGKILL, a crash) or term (SIGTERM, a graceful stop).
        #[arg(long, value_enum, default_value_t = failover::StopSignal::Kill)]
        signal: failover::StopSignal,
    },
    /// Kill the leader of an in-process 3-node Muster cluster repeatedly; time the recovery.
    Failover {
        /// Leader kills.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Use production Raft timing (heartbeat 100 ms, election 600–700 ms) instead of test timing
        /// (100 ms, 0.5–1 s).
        #[arg(long)]
        production_timing: bool,
    },
    /// Many more concurrent clients than the cluster serves at once (back-pressure).
    Overload(overload::Overload),
    /// VmRSS of server processes and disk use of data directories.
    Footprint {
        #[arg(long, value_delimiter = ',')]
        pid: Vec<u32>,
        #[arg(long, value_delimiter = ',')]
        dir: Vec<String>,
        /// Free text naming the moment of the measurement.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Print the markdown comparison table of a bench-vs-etcd run directory.
    Report {
        #[arg(long)]
        dir: PathBuf,
    },
}

/// Time allowed past `--max-secs` for set-up and clean-up before the whole run is abandoned.
const GRACE: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let limit = Duration::from_secs(args.max_secs) + GRACE;
    let json = args.json;
    let result = tokio::time::timeout(limit, run(args))
        .await
        .map_err(|_| anyhow::anyhow!("abandoned after {limit:?} (--max-secs plus {GRACE:?})"))??;
    if let Some(result) = result {
        stats::emit(&result, json);
    }
    Ok(())
}

/// Runs the subcommand; its result, or None when it printed its own output.
async fn run(args: Args) -> anyhow::Result<Option<serde_json::Value>> {
    let deadline = Instant::now() + Duration::from_secs(args.max_secs);
    let eps = common::parse_endpoints(&args.endpoints);
    let mut ordered = eps.clone();
    let uses_leader_order = !matches!(
        args.cmd,
        Cmd::FailoverExternal { .. }
            | Cmd::Failover { .. }
            | Cmd::Footprint { .. }
            | Cmd::Report { .. }
    );
    if args.leader_first && uses_leader_order {
        let (i, _) = common::find_leader(&eps, Duration::from_secs(10)).await?;
        ordered.rotate_left(i);
    }
    let result = match args.cmd {
        Cmd::Put { load, shape } => {
            kv::bench_put(&ordered, load.count, load.concurrency, shape, deadline).await?
        }
        Cmd::Range {
            load,
            shape,
            serializable,
        } => {
            kv::bench_range(
                &ordered,
                load.count,
                load.concurrency,
                shape,
                serializable,
                deadline,
            )
            .await?
        }
        Cmd::Txn { load, shape } => {
            kv::bench_txn(&ordered, load.count, load.concurrency, shape, deadline).await?
        }
        Cmd::LeaseGrant { load, ttl, keep } => {
            lease::bench_lease_grant(&ordered, load.count, load.concurrency, ttl, keep, deadline)
                .await?
        }
        Cmd::Keepalive {
            leases,
            rounds,
            grant_concurrency,
        } => lease::bench_keepalive(&ordered, leases, rounds, grant_concurrency, deadline).await?,
        Cmd::RegisterKv {
            load,
            services,
            discovers,
            ttl,
        } => {
            registry::bench_register_kv(
                &ordered,
                load.count,
                load.concurrency,
                services,
                discovers,
                ttl,
                deadline,
            )
            .await?
        }
        Cmd::Register { load, service } => {
            registry::bench_register(&ordered, load.count, load.concurrency, &service, deadline)
                .await?
        }
        Cmd::WatchLatency {
            watchers,
            events,
            per_stream,
            value_size,
            pid,
        } => {
            watch::bench_watch_latency(
                &ordered, watchers, events, per_stream, value_size, &pid, deadline,
            )
            .await?
        }
        Cmd::FailoverExternal {
            pid,
            writers,
            before_ms,
            after_ms,
            request_timeout_ms,
            signal,
        } => {
            let cfg = failover::External {
                writers,
                before: Duration::from_millis(before_ms),
                after: Duration::from_millis(after_ms),
                request_timeout: Duration::from_millis(request_timeout_ms),
                signal,
            };
            failover::bench_failover_external(&eps, &pid, cfg, deadline).await?
        }
        Cmd::Failover {
            rounds,
            production_timing,
        } => failover::bench_failover(rounds, production_timing).await?,
        Cmd::Overload(o) => overload::bench_overload(&ordered, o, deadline).await?,
        Cmd::Footprint { pid, dir, label } => footprint::footprint(&label, &pid, &dir)?,
        Cmd::Report { dir } => {
            print!("{}", report::render(&dir)?);
            return Ok(None);
        }
    };
    Ok(Some(result))
}
