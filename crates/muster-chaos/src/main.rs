//! `muster-chaos`: runs the chaos workload and nemesis against a running docker-compose Muster
//! cluster, verifies, prints the summary table and exits non-zero on any anomaly.
//! `scripts/chaos.sh` brings the cluster up, runs this, and tears it down.
//!
//! Phases (each bounded in time): discover containers → wait converged → workload + nemesis
//! for `--duration` → heal everything → stop writers → wait converged (all nodes at the same
//! applied index) → watcher catches up to the final revision → per-node final reads and checks
//! → release registrations and time their expiry → summary.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use muster_chaos::cluster::{Cluster, Node};
use muster_chaos::docker::Docker;
use muster_chaos::linearizability::{self, Budget};
use muster_chaos::nemesis;
use muster_chaos::report::Summary;
use muster_chaos::verify::{self, ExpiryCheck, Verdict};
use muster_chaos::workload::{self, counter, registers, registrations, watcher, writer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Parser, Debug)]
#[command(
    name = "muster-chaos",
    about = "Chaos checker for a docker-compose Muster cluster"
)]
struct Args {
    /// Compose project name of the running cluster (`-p` of docker compose).
    #[arg(long, env = "MUSTER_CHAOS_PROJECT", default_value = "muster-chaos")]
    project: String,
    /// Compose services, node 1 first (service i is Raft node i).
    #[arg(long, value_delimiter = ',', default_value = "muster1,muster2,muster3")]
    services: Vec<String>,
    /// Client endpoints published on the host, node 1 first.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793"
    )]
    endpoints: Vec<String>,
    /// HTTP (/health) addresses published on the host, node 1 first.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:23811,127.0.0.1:23812,127.0.0.1:23813"
    )]
    http: Vec<String>,
    /// How long the nemesis injects faults ("600", "10m", "90s").
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Seed of the fault schedule (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent writers of unique keys.
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Lease-backed registrants.
    #[arg(long, default_value_t = 3)]
    registrants: usize,
    /// Clients of the registers checked for linearizability (0: none).
    #[arg(long, default_value_t = 3)]
    lin_clients: usize,
    /// Register keys (`chaos/lin/0..N`) those clients share.
    #[arg(long, default_value_t = 4)]
    lin_keys: usize,
    /// Lease TTL in seconds.
    #[arg(long, default_value_t = 10)]
    lease_ttl: i64,
    /// Renewal interval of the registrants.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    renew_every: Duration,
    /// Shortest and longest time a fault is held.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    hold_min: Duration,
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    hold_max: Duration,
    /// Shortest and longest quiet gap after the cluster recovered from a fault.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    quiet_min: Duration,
    #[arg(long, default_value = "4s", value_parser = parse_duration)]
    quiet_max: Duration,
    /// Deadline of one client request (a miss is an "unknown" outcome).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    op_timeout: Duration,
    /// How long the cluster may take to converge after a fault is healed.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    recover_timeout: Duration,
    /// Leave membership faults (add+remove a member, replace a follower under a new id) out of
    /// the schedule.
    #[arg(long)]
    no_membership_faults: bool,
    /// How much later than TTL after its last renewal a lease may expire once renewals stop.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    late_bound: Duration,
    /// Also write the summary as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// docker binary.
    #[arg(long, env = "DOCKER", default_value = "docker")]
    docker: String,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "MUSTER_CHAOS_LOG", default_value = "info")]
    log: String,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("bad duration '{s}': {e}"))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(args).await {
        Ok(summary) => {
            println!("{}", summary.render());
            if summary.passed() {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("muster-chaos: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn discover(args: &Args, docker: &Docker) -> anyhow::Result<Cluster> {
    let n = args.services.len();
    if n < 3 || args.endpoints.len() != n || args.http.len() != n {
        bail!(
            "need ≥ 3 services and as many --endpoints and --http addresses (got {n}, {}, {})",
            args.endpoints.len(),
            args.http.len()
        );
    }
    let mut nodes = Vec::new();
    for (i, svc) in args.services.iter().enumerate() {
        let container = docker.find(&args.project, svc).await?;
        info!(node = i + 1, service = %svc, container = %container.name, network = %container.network, "found");
        nodes.push(Node {
            id: i as u64 + 1,
            endpoint: args.endpoints[i].clone(),
            http: args.http[i].clone(),
            container,
        });
    }
    let cluster = Cluster { nodes };
    // Undo leftovers of an interrupted earlier run before trusting anything.
    nemesis::heal_all(&cluster, docker).await;
    for (id, h) in cluster.health_all().await {
        if let Some(h) = h {
            if h.node_id != id {
                bail!(
                    "{} answers as node {}, expected node {id}: --services/--http order?",
                    args.http[id as usize - 1],
                    h.node_id
                );
            }
        }
    }
    Ok(cluster)
}

async fn run(args: Args) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_000)
    });
    info!(
        seed,
        duration_s = args.duration.as_secs(),
        "--- muster-chaos"
    );
    let docker = Docker::new(args.docker.clone());
    let mut cluster = discover(&args, &docker).await?;
    let leader = cluster
        .wait_converged(Duration::from_secs(60), false)
        .await
        .context("cluster not healthy before the run")?;
    info!(leader, "--- cluster converged; starting workload");

    let settings = workload::Settings {
        endpoints: cluster.endpoints(),
        op_timeout: args.op_timeout,
        max_ops: 50_000_000,
    };
    let stop = CancellationToken::new();
    let release = CancellationToken::new();
    let (target_tx, target_rx) = watch::channel(None);
    // The watcher's hard deadline: the whole run plus generous time to converge and catch up.
    let watch_deadline =
        Instant::now() + args.duration + args.recover_timeout * 3 + Duration::from_secs(120);
    let watch_task = tokio::spawn(watcher::run(settings.clone(), target_rx, watch_deadline));
    let writer_tasks: Vec<_> = (0..args.writers)
        .map(|w| tokio::spawn(writer::run(settings.clone(), w, stop.clone())))
        .collect();
    let counter_task = tokio::spawn(counter::run(settings.clone(), stop.clone()));
    let lin_task = tokio::spawn(registers::run(
        settings.clone(),
        args.lin_clients,
        args.lin_keys,
        stop.clone(),
        None,
    ));
    let reg_tasks: Vec<_> = (0..args.registrants)
        .map(|r| {
            tokio::spawn(registrations::run(
                settings.clone(),
                r,
                args.lease_ttl,
                args.renew_every,
                release.clone(),
            ))
        })
        .collect();

    // Faults. Ctrl-C stops the nemesis early (it heals before returning).
    let nem_settings = nemesis::Settings {
        seed,
        duration: args.duration,
        hold_min: args.hold_min,
        hold_max: args.hold_max,
        quiet_min: args.quiet_min,
        quiet_max: args.quiet_max,
        recover_timeout: args.recover_timeout,
        max_rounds: 100_000,
        membership: !args.no_membership_faults,
        project: args.project.clone(),
        op_timeout: args.op_timeout,
    };
    let nem_stop = CancellationToken::new();
    let ctrl_c = {
        let t = nem_stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                warn!("interrupted: healing and verifying what ran so far");
                t.cancel();
            }
        })
    };
    let nem = nemesis::run(&mut cluster, &docker, &nem_settings, &nem_stop).await;
    ctrl_c.abort();
    for line in &nem.history {
        info!("{line}");
    }

    // Let the workload run a little on the healed cluster, then stop it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    info!("--- stopping the workload");
    stop.cancel();
    let mut writers = Vec::new();
    for t in writer_tasks {
        writers.push(t.await??);
    }
    let counter = counter_task.await??;
    let lin_histories = lin_task.await??;

    let mut problems = Vec::new();
    let mut failure = None;
    info!("--- waiting for every node to apply everything");
    let final_rev = match cluster.wait_converged(args.recover_timeout * 2, true).await {
        Ok(_) => {
            let hs = cluster.health_all().await;
            hs.iter()
                .filter_map(|(_, h)| h.as_ref().map(|h| h.revision))
                .max()
                .unwrap_or(0)
        }
        Err(e) => {
            failure = Some(format!("{e:#}"));
            0
        }
    };
    info!(
        final_rev,
        "--- waiting for the watcher to reach the final revision"
    );
    let _ = target_tx.send(Some(final_rev));
    let watch = watch_task.await??;

    info!("--- final reads on every node");
    let mut states = Vec::new();
    let states_read_at = Instant::now();
    for n in &cluster.nodes {
        match verify::read_node(&n.endpoint, args.op_timeout * 3).await {
            Ok(st) => states.push((n.id, st)),
            Err(e) => {
                problems.push(format!("node {}: final read failed: {e:#}", n.id));
                failure.get_or_insert_with(|| format!("final read of node {} failed", n.id));
            }
        }
    }
    let mut verdict: Verdict = verify::check(&writers, &counter, &watch, &states, &mut problems);

    info!("--- releasing registrations; timing their expiry");
    let ttl = Duration::from_secs(u64::try_from(args.lease_ttl).unwrap_or(1));
    // Final-read check of the live registrations happens before they are released.
    release.cancel();
    let mut regs = Vec::new();
    for t in reg_tasks {
        regs.push(t.await??);
    }
    verify::check_registrations(&regs, &states, states_read_at, &mut verdict, &mut problems);
    let lives: Vec<_> = regs.iter().filter_map(|r| r.live.clone()).collect();
    let expiry = match verify::check_expiry(
        &cluster,
        &lives,
        ttl,
        args.late_bound,
        args.op_timeout,
        &mut verdict,
        &mut problems,
    )
    .await
    {
        Ok(x) => x,
        Err(e) => {
            problems.push(format!("expiry check failed: {e:#}"));
            ExpiryCheck::default()
        }
    };

    // CPU-bound, hence last: it must not slow the renewals or the expiry timing above.
    info!(
        keys = lin_histories.len(),
        "--- checking the registers for linearizability"
    );
    let lin = tokio::task::spawn_blocking(move || {
        linearizability::check(&lin_histories, &Budget::default())
    })
    .await?;
    for k in &lin.keys {
        info!(
            key = %k.key,
            ok = k.ops_ok,
            unknown = k.ops_unknown,
            segments = k.segments,
            steps = k.steps,
            ms = k.elapsed.as_millis() as u64,
            outcome = k.outcome.name(),
            "linearizability"
        );
    }
    verify::record_linearizability(&lin, &mut verdict, &mut problems);

    let summary = Summary {
        seed,
        duration: args.duration,
        elapsed: started.elapsed(),
        lease_ttl: ttl,
        late_bound: args.late_bound,
        counter,
        regs,
        nemesis: nem,
        verdict,
        expiry,
        failure,
        problems,
    };
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&summary.to_json())?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(summary)
}
