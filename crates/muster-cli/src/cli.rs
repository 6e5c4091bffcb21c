//! The command line, as clap derive types. Every flag documented here shows in `--help`.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// `muster`: the command-line client for Muster (etcd v3 KV, leases, watch, service registry).
///
/// Exit codes: 0 success; 1 error; 2 usage error; 3 not found / compare failed / lease lost;
/// 4 the outcome of a write is unknown (it may or may not have been applied).
#[derive(Debug, Parser)]
#[command(name = "muster", version, about, long_about = None)]
pub struct Cli {
    /// Comma-separated endpoints (host:port, http://host:port or https://host:port).
    #[arg(
        long,
        global = true,
        env = "MUSTER_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Deadline of each request, across its retries (e.g. 500ms, 10s).
    #[arg(long, global = true, value_parser = parse_duration, default_value = "10s")]
    pub timeout: Duration,
    /// TLS: the CA (PEM) that signs the nodes' certificates; turns TLS on (etcdctl's flag).
    #[arg(long, global = true, env = "MUSTER_CACERT")]
    pub cacert: Option<std::path::PathBuf>,
    /// TLS: this client's certificate (PEM), for clusters that require one.
    #[arg(
        long = "cert",
        id = "client_cert",
        global = true,
        env = "MUSTER_CERT",
        requires = "cacert"
    )]
    pub cert: Option<std::path::PathBuf>,
    /// TLS: this client's private key (PEM).
    #[arg(
        long = "key",
        id = "client_key",
        global = true,
        env = "MUSTER_KEY",
        requires = "client_cert"
    )]
    pub key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns with a header (streams: one line per event).
    Table,
    /// JSON (streams: one JSON object per line).
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Keys and values.
    #[command(subcommand)]
    Kv(KvCmd),
    /// Leases.
    #[command(subcommand)]
    Lease(LeaseCmd),
    /// The service registry.
    #[command(subcommand)]
    Registry(RegistryCmd),
    /// Cluster membership and status.
    #[command(subcommand)]
    Cluster(ClusterCmd),
}

#[derive(Debug, Subcommand)]
pub enum KvCmd {
    /// Reads a key or range (exit 3 when nothing matches).
    Get(GetArgs),
    /// Writes a key.
    Put {
        key: String,
        value: String,
        /// Attach to this lease (hex id, as printed by `lease grant`).
        #[arg(long, value_parser = parse_lease_id)]
        lease: Option<i64>,
        /// Print the previous value.
        #[arg(long)]
        prev_kv: bool,
    },
    /// Deletes a key or prefix (exit 3 when nothing was deleted).
    Del {
        key: String,
        /// Every key starting with KEY.
        #[arg(long)]
        prefix: bool,
        /// Print the deleted key-values.
        #[arg(long)]
        prev_kv: bool,
    },
    /// A transaction: if every --if compare holds run the --then ops, else the --else ops
    /// (exit 3 when the compares failed).
    ///
    /// Compares: `value(KEY) = VALUE`, `version(KEY) > N`, `create(KEY) = N`,
    /// `mod(KEY) < N`, `lease(KEY) != ID` (operators = != > <). Ops: `put KEY VALUE`,
    /// `get KEY`, `get --prefix KEY`, `del KEY`, `del --prefix KEY`. Quote values with spaces
    /// with double quotes.
    Txn {
        /// A compare (repeatable).
        #[arg(long = "if", value_name = "COMPARE")]
        compares: Vec<String>,
        /// An op of the success branch (repeatable).
        #[arg(long = "then", value_name = "OP")]
        then_ops: Vec<String>,
        /// An op of the failure branch (repeatable).
        #[arg(long = "else", value_name = "OP")]
        else_ops: Vec<String>,
    },
    /// Streams changes to a key or prefix until interrupted (or --count events); survives the
    /// death of the node serving it.
    Watch {
        key: String,
        /// Every key starting with KEY.
        #[arg(long)]
        prefix: bool,
        /// Start from this revision (default: changes from now on).
        #[arg(long, default_value_t = 0)]
        rev: i64,
        /// Include previous values.
        #[arg(long)]
        prev_kv: bool,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Discards history below a revision.
    Compact { revision: i64 },
}

#[derive(Debug, Args)]
pub struct GetArgs {
    pub key: String,
    /// Every key starting with KEY.
    #[arg(long)]
    pub prefix: bool,
    /// Every key ≥ KEY.
    #[arg(long)]
    pub from_key: bool,
    /// At most this many keys.
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Read at this revision.
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Serve from any node's replica (may be stale).
    #[arg(long)]
    pub serializable: bool,
    /// Print keys only.
    #[arg(long)]
    pub keys_only: bool,
    /// Print the count only.
    #[arg(long)]
    pub count_only: bool,
}

#[derive(Debug, Subcommand)]
pub enum LeaseCmd {
    /// Grants a lease of TTL seconds; prints its id (hex).
    Grant { ttl: i64 },
    /// Renews a lease every TTL/3 until interrupted (or --count renewals); exit 3 when the
    /// lease is lost.
    KeepAlive {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// Renew once and exit.
        #[arg(long)]
        once: bool,
        /// Stop after this many renewals.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Revokes a lease and deletes its keys (exit 3 when it does not exist).
    Revoke {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
    },
    /// A lease's remaining TTL (exit 3 when it does not exist).
    Ttl {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// List the attached keys too.
        #[arg(long)]
        keys: bool,
    },
    /// Every lease.
    List,
}

/// Names a service.
#[derive(Debug, Args, Clone)]
pub struct ServiceArgs {
    /// Service name.
    #[arg(long, short = 's')]
    pub service: String,
    /// Namespace (default "public").
    #[arg(long, default_value = "")]
    pub namespace: String,
    /// Group (default "DEFAULT_GROUP").
    #[arg(long, default_value = "")]
    pub group: String,
}

#[derive(Debug, Subcommand)]
pub enum RegistryCmd {
    /// Registers an instance. Ephemeral instances live under a lease of --ttl; with
    /// --keep-alive the command keeps it registered until interrupted, then deregisters it.
    Register {
        #[command(flatten)]
        service: ServiceArgs,
        /// Address clients connect to.
        #[arg(long)]
        address: String,
        /// Port clients connect to.
        #[arg(long)]
        port: u16,
        /// Instance id (default "address:port").
        #[arg(long, default_value = "")]
        id: String,
        /// Load-balancing weight 0–10000 (default 100).
        #[arg(long)]
        weight: Option<u32>,
        /// Metadata entry KEY=VALUE (repeatable).
        #[arg(long = "meta", value_parser = parse_pair)]
        metadata: Vec<(String, String)>,
        /// Cluster (zone) of the instance.
        #[arg(long, default_value = "")]
        cluster: String,
        /// Bind the instance to a lease (it vanishes when the lease expires).
        #[arg(long)]
        ephemeral: bool,
        /// Lease TTL of an ephemeral instance.
        #[arg(long, value_parser = parse_duration, default_value = "10s")]
        ttl: Duration,
        /// Keep the ephemeral instance registered until interrupted (implies --ephemeral).
        #[arg(long)]
        keep_alive: bool,
    },
    /// Removes an instance (exit 3 when it did not exist).
    Deregister {
        #[command(flatten)]
        service: ServiceArgs,
        /// Instance id.
        #[arg(long)]
        id: String,
    },
    /// Lists a service's instances (exit 3 when there are none).
    Discover {
        #[command(flatten)]
        service: ServiceArgs,
        /// Only healthy and enabled instances.
        #[arg(long)]
        healthy_only: bool,
        /// Only instances with this metadata entry KEY=VALUE (repeatable).
        #[arg(long = "meta", value_parser = parse_pair)]
        metadata: Vec<(String, String)>,
        /// Only instances in this cluster (repeatable).
        #[arg(long = "cluster")]
        clusters: Vec<String>,
        /// Serve from any node's replica (may be stale).
        #[arg(long)]
        serializable: bool,
    },
    /// Lists the services of a namespace and group.
    Services {
        /// Namespace (default "public").
        #[arg(long, default_value = "")]
        namespace: String,
        /// Group (default "DEFAULT_GROUP").
        #[arg(long, default_value = "")]
        group: String,
    },
    /// Prints a service's instances, then every change, until interrupted (or --count
    /// changes).
    Watch {
        #[command(flatten)]
        service: ServiceArgs,
        /// Stop after this many changes (the initial listing not counted).
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// The cluster's members.
    Members,
    /// Every endpoint's status (exit 1 when one is unreachable).
    Status,
    /// Add a member by its peer address; prints its id (start it with --node-id ID --join).
    Add {
        /// The new node's peer address, host:port of its --peer-listen (or http://host:port).
        peer_url: String,
        /// Add as a learner (promote it once it caught up).
        #[arg(long)]
        learner: bool,
    },
    /// Promote a learner to voter.
    Promote {
        /// Member id (decimal, as `musterd --node-id` takes it).
        id: u64,
    },
    /// Remove a member; it stops serving.
    Remove {
        /// Member id (decimal).
        id: u64,
    },
}

/// Parses "500ms", "10s", "1m".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

/// Lease ids are hexadecimal, as printed (an optional `0x` is accepted).
pub fn parse_lease_id(s: &str) -> Result<i64, String> {
    let hex = s.trim_start_matches("0x");
    u64::from_str_radix(hex, 16)
        .map(|v| v as i64)
        .map_err(|_| format!("{s:?} is not a hexadecimal lease id"))
}

/// Parses KEY=VALUE.
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_values() {
        assert_eq!(parse_lease_id("694d7c"), Ok(0x694d7c));
        assert_eq!(parse_lease_id("0x10"), Ok(16));
        assert!(parse_lease_id("xyz").is_err());
        assert_eq!(parse_pair("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_pair("=b").is_err());
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
