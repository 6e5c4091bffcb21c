//! `musterd`: runs one Muster node.
//!
//! Configuration is layered: built-in defaults, then the TOML file given by `--config`, then
//! `MUSTER_*` environment variables, then command-line flags (clap reads both).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use muster_server::NodeConfig;
use tracing_subscriber::EnvFilter;

/// jemalloc instead of glibc malloc: the request path allocates a lot across threads (tonic,
/// h2, openraft), and glibc's arenas spent ~15% of the nodes' CPU under `muster-bench put`.
/// Measured at 16 and 64 clients: +7% puts/s on average (7 of 8 A/B pairs better), for ~2 MiB
/// more idle RSS per node and ~15% more after load (still under etcd's). See docs/design.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(
    name = "musterd",
    version,
    about = "A Muster node: Raft-replicated registry with the etcd v3 API",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Subcommand>,
    /// TOML config file (fields of NodeConfig).
    #[arg(long, env = "MUSTER_CONFIG")]
    config: Option<PathBuf>,
    /// This node's id (≥ 1).
    #[arg(long, env = "MUSTER_NODE_ID")]
    node_id: Option<u64>,
    /// Data directory.
    #[arg(long, env = "MUSTER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// gRPC listen address for clients (default 127.0.0.1:2379).
    #[arg(long, env = "MUSTER_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address clients reach this node at (default: the bound client address).
    #[arg(long, env = "MUSTER_ADVERTISE")]
    advertise: Option<String>,
    /// gRPC listen address for peers, Raft only (default 127.0.0.1:2380).
    #[arg(long, env = "MUSTER_PEER_LISTEN")]
    peer_listen: Option<SocketAddr>,
    /// Address peers reach this node at (default: the bound peer address).
    #[arg(long, env = "MUSTER_PEER_ADVERTISE")]
    peer_advertise: Option<String>,
    /// File holding the cluster's peer secret (the same on every node; required for more
    /// than one node).
    #[arg(long, env = "MUSTER_PEER_TOKEN_FILE")]
    peer_token_file: Option<PathBuf>,
    /// Create the peer token file with a random secret if it does not exist.
    #[arg(long, env = "MUSTER_CREATE_PEER_TOKEN")]
    create_peer_token: bool,
    /// HTTP listen address for /health, /ready, /metrics.
    #[arg(long, env = "MUSTER_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Initial members by peer address: `1=host:2380,2=host:22380,3=host:32380` (first start
    /// only).
    #[arg(long, env = "MUSTER_INITIAL_CLUSTER")]
    initial_cluster: Option<String>,
    /// Join an existing cluster as a member added with MemberAdd (never initialise one).
    #[arg(long, env = "MUSTER_JOIN")]
    join: bool,
    /// Cluster name.
    #[arg(long, env = "MUSTER_CLUSTER_NAME")]
    cluster_name: Option<String>,
    /// Auto-compaction, as etcd: `periodic` (keep --auto-compaction-retention of history) or
    /// `revision` (keep that many revisions). Off unless a retention is given.
    #[arg(long, env = "MUSTER_AUTO_COMPACTION_MODE", default_value = "periodic")]
    auto_compaction_mode: String,
    /// Auto-compaction retention: periodic takes a duration ("30m", "1h") or a number of
    /// hours; revision a revision count. 0 (the default) is off.
    #[arg(long, env = "MUSTER_AUTO_COMPACTION_RETENTION")]
    auto_compaction_retention: Option<String>,
    /// Space quota in bytes (etcd's flag; 0 = 2 GiB): past it NOSPACE is raised and writes
    /// that take space fail until `etcdctl alarm disarm`.
    #[arg(long, env = "MUSTER_QUOTA_BACKEND_BYTES")]
    quota_backend_bytes: Option<u64>,
    /// How often the leader compares members' keyspace hashes, e.g. "5m" (etcd's flag; 0 or
    /// absent = off). A mismatch raises CORRUPT.
    #[arg(long, env = "MUSTER_CORRUPT_CHECK_INTERVAL")]
    corrupt_check_interval: Option<humantime::Duration>,
    /// Client port TLS: certificate chain (PEM). With --key-file, the client port speaks TLS.
    #[arg(long, env = "MUSTER_CERT_FILE")]
    cert_file: Option<PathBuf>,
    /// Client port TLS: private key (PEM).
    #[arg(long, env = "MUSTER_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// CA (PEM) that signs client certificates.
    #[arg(long, env = "MUSTER_TRUSTED_CA_FILE")]
    trusted_ca_file: Option<PathBuf>,
    /// Require client certificates signed by --trusted-ca-file.
    #[arg(long, env = "MUSTER_CLIENT_CERT_AUTH")]
    client_cert_auth: bool,
    /// Peer port TLS: certificate chain (PEM), also presented when calling peers.
    #[arg(long, env = "MUSTER_PEER_CERT_FILE")]
    peer_cert_file: Option<PathBuf>,
    /// Peer port TLS: private key (PEM).
    #[arg(long, env = "MUSTER_PEER_KEY_FILE")]
    peer_key_file: Option<PathBuf>,
    /// CA (PEM) that signs peer certificates.
    #[arg(long, env = "MUSTER_PEER_TRUSTED_CA_FILE")]
    peer_trusted_ca_file: Option<PathBuf>,
    /// Require peers to present a certificate of --peer-trusted-ca-file (mutual TLS; replaces
    /// the peer token).
    #[arg(long, env = "MUSTER_PEER_CLIENT_CERT_AUTH")]
    peer_client_cert_auth: bool,
    /// Allowed TLS cipher suites, comma-separated IANA names (etcd's flag).
    #[arg(long, env = "MUSTER_CIPHER_SUITES", value_delimiter = ',')]
    cipher_suites: Vec<String>,
    /// Minimum TLS version: TLS1.2 or TLS1.3.
    #[arg(long, env = "MUSTER_TLS_MIN_VERSION")]
    tls_min_version: Option<String>,
    /// Log filter (tracing EnvFilter syntax), e.g. `info,openraft=warn`.
    #[arg(long, env = "MUSTER_LOG", default_value = "info,openraft=warn")]
    log: String,
}

#[derive(clap::Subcommand, Debug)]
enum Subcommand {
    /// Seed an empty data dir from a backup (`etcdctl snapshot save` against Muster), then
    /// start each member of the new cluster on its restored dir with the usual flags
    /// (`--node-id`, `--initial-cluster`, ...). Restore the same file for every member.
    Restore {
        /// The backup file.
        #[arg(long)]
        snapshot: PathBuf,
        /// The new member's data dir (must not hold a node's data).
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Write throw-away certificates for a local TLS cluster into DIR: ca.crt, node.crt and
    /// node.key (servers and peers, for --hosts), client.crt and client.key (common name
    /// --client-user), unless DIR already holds ca.crt. For trying TLS out; bring your own
    /// PKI to production.
    Certs {
        #[arg(long)]
        dir: PathBuf,
        /// Addresses and names the node certificate is valid for.
        #[arg(long, value_delimiter = ',', default_value = "127.0.0.1,localhost")]
        hosts: Vec<String>,
        /// The client certificate's common name.
        #[arg(long, default_value = "root")]
        client_user: String,
    },
}

fn build_config(args: &Args) -> anyhow::Result<NodeConfig> {
    let mut c = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => NodeConfig::default(),
    };
    if let Some(v) = args.node_id {
        c.node_id = v;
    }
    if let Some(v) = &args.data_dir {
        c.data_dir = v.clone();
    }
    if let Some(v) = args.listen {
        c.listen = v;
    }
    if let Some(v) = &args.advertise {
        c.advertise = Some(v.clone());
    }
    if let Some(v) = args.peer_listen {
        c.peer_listen = v;
    }
    if let Some(v) = &args.peer_advertise {
        c.peer_advertise = Some(v.clone());
    }
    if let Some(v) = &args.peer_token_file {
        c.peer_token_file = Some(v.clone());
    }
    if args.create_peer_token {
        c.create_peer_token = true;
    }
    if let Some(v) = args.http_listen {
        c.http_listen = Some(v);
    }
    if let Some(v) = &args.initial_cluster {
        c.initial_cluster = NodeConfig::parse_initial_cluster(v)?;
    }
    if args.join {
        c.join = true;
    }
    if let Some(v) = &args.cluster_name {
        c.cluster_name = v.clone();
    }
    if let Some(q) = args.quota_backend_bytes {
        c.quota_backend_bytes = q;
    }
    if let Some(d) = args.corrupt_check_interval {
        c.corrupt_check_interval = d.into();
    }
    let tls = &mut c.tls;
    for (flag, field) in [
        (&args.cert_file, &mut tls.cert_file),
        (&args.key_file, &mut tls.key_file),
        (&args.trusted_ca_file, &mut tls.trusted_ca_file),
        (&args.peer_cert_file, &mut tls.peer_cert_file),
        (&args.peer_key_file, &mut tls.peer_key_file),
        (&args.peer_trusted_ca_file, &mut tls.peer_trusted_ca_file),
    ] {
        if let Some(v) = flag {
            *field = Some(v.clone());
        }
    }
    tls.client_cert_auth |= args.client_cert_auth;
    tls.peer_client_cert_auth |= args.peer_client_cert_auth;
    if !args.cipher_suites.is_empty() {
        tls.cipher_suites = args.cipher_suites.clone();
    }
    if let Some(v) = &args.tls_min_version {
        tls.min_version = v.clone();
    }
    if let Some(retention) = &args.auto_compaction_retention {
        let auto = muster_server::compactor::AutoCompactionConfig::from_flags(
            &args.auto_compaction_mode,
            retention,
        )
        .map_err(anyhow::Error::msg)?;
        c.auto_compaction.mode = auto.mode;
        c.auto_compaction.retention_period = auto.retention_period;
        c.auto_compaction.retention_revisions = auto.retention_revisions;
    }
    c.validate()?;
    Ok(c)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&args.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    match &args.command {
        Some(Subcommand::Restore { snapshot, data_dir }) => return restore(snapshot, data_dir),
        Some(Subcommand::Certs {
            dir,
            hosts,
            client_user,
        }) => {
            let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
            muster_server::pki::write_local(dir, &hosts, client_user)?;
            println!(
                "wrote ca.crt, node.crt, node.key, client.crt, client.key to {}",
                dir.display()
            );
            return Ok(());
        }
        None => {}
    }
    let config = build_config(&args)?;
    let node_id = config.node_id;
    let span = tracing::info_span!("node", node_id);
    let _enter = span.enter();
    let mut server = muster_server::start(config)
        .await
        .context("starting node")?;
    tokio::select! {
        _ = server.wait() => {}
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            server.stop_gracefully().await;
        }
    }
    Ok(())
}

/// `musterd restore`: checks the backup's checksum and writes its keyspace into `data_dir`.
fn restore(snapshot: &std::path::Path, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(snapshot).with_context(|| format!("reading {}", snapshot.display()))?;
    eprintln!(
        "restoring {} ({} bytes) into {}",
        snapshot.display(),
        bytes.len(),
        data_dir.display()
    );
    let summary = muster_store::raft::state_machine::restore_backup(&bytes, data_dir)
        .with_context(|| format!("restoring {}", snapshot.display()))?;
    println!(
        "restored revision {} ({} records) into {}; start the member with --data-dir {} and \
         the new cluster's --node-id and --initial-cluster",
        summary.revision,
        summary.records,
        data_dir.display(),
        data_dir.display()
    );
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
