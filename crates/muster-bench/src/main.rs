//! `muster-bench`: load generator and measurements for Muster (and, through the same etcd v3
//! API, for etcd, so both can be measured side by side).
//!
//! Subcommands:
//! - `put`: puts through the etcd API at a given concurrency; latency percentiles and throughput.
//! - `failover`: an in-process 3-node cluster; kills the leader repeatedly and measures the time
//!   until a new leader is agreed and until a write succeeds again.
//!
//! - `lease-grant`: LeaseGrant throughput and latency (the leases are revoked afterwards).
//! - `keepalive`: N leases kept alive over ONE LeaseKeepAlive stream, R rounds.
//! - `register`: Registry.Register throughput (persistent instances, distinct ids).
//! - `watch-latency`: put-ack → receipt latency at W watchers; server memory per watcher.
//!
//! Every loop is bounded in count and time; progress is printed once a second.

mod common;
mod lease;
mod registry;
mod stats;
mod watch;

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use muster_testkit::TestCluster;
use stats::Samples;

#[derive(Parser)]
#[command(
    name = "muster-bench",
    about = "Benchmarks for Muster (and etcd through the same API)"
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
    /// Print the result as one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Put keys through the etcd KV API.
    Put {
        /// Comma-separated endpoints (host:port).
        #[arg(long, env = "MUSTER_ENDPOINTS", default_value = "127.0.0.1:2379")]
        endpoints: String,
        /// Total puts.
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Concurrent clients (each sends one put at a time).
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        #[arg(long, default_value_t = 16)]
        key_size: usize,
        #[arg(long, default_value_t = 128)]
        value_size: usize,
        /// Distinct keys (puts cycle through them).
        #[arg(long, default_value_t = 1000)]
        keys: usize,
        /// Stop after this long even if `count` is not reached.
        #[arg(long, default_value = "120")]
        max_secs: u64,
    },
    /// Kill the leader of an in-process 3-node cluster repeatedly; time the recovery.
    Failover {
        /// Leader kills.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Use production Raft timing (heartbeat 250 ms, election 1–2 s) instead of test timing.
        #[arg(long)]
        production_timing: bool,
    },
    /// LeaseGrant throughput and latency (raw gRPC, workers spread over the endpoints).
    LeaseGrant {
        #[arg(long, env = "MUSTER_ENDPOINTS", default_value = "127.0.0.1:2379")]
        endpoints: String,
        #[arg(long, default_value_t = 2000)]
        count: usize,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        #[arg(long, default_value_t = 60)]
        ttl: i64,
        /// Leave the leases (default: revoke them afterwards, timed separately).
        #[arg(long)]
        keep: bool,
        #[arg(long, default_value = "120")]
        max_secs: u64,
    },
    /// Grant N leases (TTL 60), then keep them all alive over ONE LeaseKeepAlive stream.
    Keepalive {
        /// The stream goes to the first endpoint; grants are spread over all.
        #[arg(long, env = "MUSTER_ENDPOINTS", default_value = "127.0.0.1:2379")]
        endpoints: String,
        #[arg(long, default_value_t = 1000)]
        leases: usize,
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Concurrency of the setup grants and cleanup revokes.
        #[arg(long, default_value_t = 32)]
        grant_concurrency: usize,
        #[arg(long, default_value = "120")]
        max_secs: u64,
    },
    /// Registry.Register throughput: persistent instances with distinct instance ids.
    Register {
        #[arg(long, env = "MUSTER_ENDPOINTS", default_value = "127.0.0.1:2379")]
        endpoints: String,
        #[arg(long, default_value_t = 2000)]
        count: usize,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        #[arg(long, default_value = "bench-svc")]
        service: String,
        #[arg(long, default_value = "120")]
        max_secs: u64,
    },
    /// Put-ack → receipt latency at W prefix watchers (spread over the endpoints).
    WatchLatency {
        /// The writer uses the first endpoint (put the leader first); watch streams use all.
        #[arg(long, env = "MUSTER_ENDPOINTS", default_value = "127.0.0.1:2379")]
        endpoints: String,
        #[arg(long, default_value_t = 1)]
        watchers: usize,
        #[arg(long, default_value_t = 200)]
        events: usize,
        /// Watchers multiplexed on one Watch stream.
        #[arg(long, default_value_t = 100)]
        per_stream: usize,
        #[arg(long, default_value_t = 128)]
        value_size: usize,
        /// Comma-separated musterd pids: VmRSS is read before and after creating the
        /// watchers (give every node's pid to cover watchers on all endpoints).
        #[arg(long, value_delimiter = ',')]
        musterd_pid: Vec<u32>,
        #[arg(long, default_value = "120")]
        max_secs: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.cmd {
        Cmd::Put {
            endpoints,
            count,
            concurrency,
            key_size,
            value_size,
            keys,
            max_secs,
        } => {
            let eps: Vec<String> = endpoints.split(',').map(|s| s.trim().to_string()).collect();
            let r = bench_put(
                &eps,
                count,
                concurrency,
                key_size,
                value_size,
                keys,
                Duration::from_secs(max_secs),
            )
            .await?;
            r.print("put", args.json);
        }
        Cmd::Failover {
            rounds,
            production_timing,
        } => bench_failover(rounds, production_timing, args.json).await?,
        Cmd::LeaseGrant {
            endpoints,
            count,
            concurrency,
            ttl,
            keep,
            max_secs,
        } => {
            lease::bench_lease_grant(
                &common::parse_endpoints(&endpoints),
                count,
                concurrency,
                ttl,
                Duration::from_secs(max_secs),
                keep,
                args.json,
            )
            .await?
        }
        Cmd::Keepalive {
            endpoints,
            leases,
            rounds,
            grant_concurrency,
            max_secs,
        } => {
            lease::bench_keepalive(
                &common::parse_endpoints(&endpoints),
                leases,
                rounds,
                grant_concurrency,
                Duration::from_secs(max_secs),
                args.json,
            )
            .await?
        }
        Cmd::Register {
            endpoints,
            count,
            concurrency,
            service,
            max_secs,
        } => {
            registry::bench_register(
                &common::parse_endpoints(&endpoints),
                count,
                concurrency,
                service,
                Duration::from_secs(max_secs),
                args.json,
            )
            .await?
        }
        Cmd::WatchLatency {
            endpoints,
            watchers,
            events,
            per_stream,
            value_size,
            musterd_pid,
            max_secs,
        } => {
            watch::bench_watch_latency(
                &common::parse_endpoints(&endpoints),
                watchers,
                events,
                per_stream,
                value_size,
                &musterd_pid,
                Duration::from_secs(max_secs),
                args.json,
            )
            .await?
        }
    }
    Ok(())
}

fn key_for(i: usize, key_size: usize) -> String {
    let k = format!("bench/{i:010}");
    if k.len() >= key_size {
        k
    } else {
        format!("{k}{}", "k".repeat(key_size - k.len()))
    }
}

async fn bench_put(
    endpoints: &[String],
    count: usize,
    concurrency: usize,
    key_size: usize,
    value_size: usize,
    keys: usize,
    max: Duration,
) -> anyhow::Result<Samples> {
    let concurrency = concurrency.max(1);
    let value = vec![b'v'; value_size];
    let started = Instant::now();
    let deadline = started + max;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let client = etcd_client::Client::connect(endpoints, None)
            .await
            .context("connecting")?;
        let value = value.clone();
        let done = done.clone();
        let share = count / concurrency + usize::from(w < count % concurrency);
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            let mut lat = Vec::with_capacity(share);
            for i in 0..share {
                if Instant::now() >= deadline {
                    break;
                }
                let key = key_for((w + i * concurrency) % keys.max(1), key_size);
                let t = Instant::now();
                client.put(key, value.clone(), None).await?;
                lat.push(t.elapsed());
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            anyhow::Ok(lat)
        }));
    }
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                eprintln!(
                    "  … {} / {count} puts",
                    done.load(std::sync::atomic::Ordering::Relaxed)
                );
            }
        })
    };
    let mut all = Vec::with_capacity(count);
    for t in tasks {
        all.extend(t.await??);
    }
    progress.abort();
    Ok(Samples::new(all, started.elapsed()))
}

async fn bench_failover(rounds: usize, production_timing: bool, json: bool) -> anyhow::Result<()> {
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
    Samples::new(elect, Duration::ZERO).print("failover: kill → new leader agreed", json);
    Samples::new(write, Duration::ZERO).print("failover: kill → first write acknowledged", json);
    Ok(())
}
