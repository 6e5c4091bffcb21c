//! Node configuration: plain serde structs with defaults and validation. The binary layers
//! defaults → TOML file → `MUSTER_*` environment → flags on top of these (see `main.rs`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use muster_types::Limits;
use serde::{Deserialize, Serialize};

/// One node's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's Raft id (≥ 1). Never reuse an id with an empty data dir.
    pub node_id: u64,
    /// Where the Raft log, state machine and snapshots live.
    pub data_dir: PathBuf,
    /// gRPC listen address for clients (port 0 picks a free port). Serves the etcd API and
    /// Muster's own services, never Raft.
    pub listen: SocketAddr,
    /// Address clients use to reach this node (MemberList, leader hints); defaults to the
    /// bound client address.
    pub advertise: Option<String>,
    /// gRPC listen address for peers: Raft replication, votes, snapshots, forwarded writes
    /// and reads (`muster.raft.v1.RaftTransport`), nothing else.
    pub peer_listen: SocketAddr,
    /// Address other nodes reach this node's peer port at; defaults to the bound peer address.
    /// This is the address `initial_cluster` and MemberAdd name.
    pub peer_advertise: Option<String>,
    /// A file holding the cluster's peer secret: every node of a cluster must hold the same
    /// one. Peers present it on every RaftTransport call; a call without it, or with another,
    /// is refused (Unauthenticated). Required for a cluster of more than one node; a
    /// single-node cluster without one creates `<data_dir>/peer-token`.
    pub peer_token_file: Option<PathBuf>,
    /// Create `peer_token_file` with a random secret when it does not exist (atomically: of
    /// nodes starting at once on a shared volume the first wins, the others read its secret).
    /// For the compose cluster and local scripts; a production cluster distributes one file.
    pub create_peer_token: bool,
    /// HTTP listen address for /health, /ready and /metrics; `None` disables HTTP.
    pub http_listen: Option<SocketAddr>,
    /// The initial members, id → peer address. Used only on first start with an empty data dir;
    /// the node with the lowest id initialises the cluster.
    pub initial_cluster: BTreeMap<u64, String>,
    /// Name reported in logs; also hashed into the etcd `cluster_id`.
    pub cluster_name: String,
    /// Raft timing.
    pub raft: RaftTiming,
    /// Request limits.
    pub limits: Limits,
    /// How long a write waits for a leader to be elected before failing with Unavailable.
    #[serde(with = "humantime_serde")]
    pub leader_wait: Duration,
    /// Start as a new member of an existing cluster (added with MemberAdd): never initialise a
    /// cluster, wait to be contacted by the leader.
    pub join: bool,
    /// Leases: TTL bounds and the leader's expiry reaper.
    pub lease: LeaseConfig,
    /// Watch streams: progress notifications, per-stream and per-watcher bounds.
    pub watch: WatchConfig,
    /// sled's page cache bound, in bytes. Current values and the key index are in memory
    /// anyway (the MVCC index), so the cache mostly serves the log tail and old revisions;
    /// sled's own default (1 GiB) would only grow the node's RSS.
    pub store_cache_bytes: u64,
    /// Back-pressure: queue and concurrency bounds past which requests are refused at once.
    pub backpressure: BackpressureConfig,
    /// Auto-compaction (etcd's `--auto-compaction-mode/-retention`); off by default, as etcd.
    pub auto_compaction: crate::compactor::AutoCompactionConfig,
    /// The space quota (etcd's `--quota-backend-bytes`; 0 = the default, 2 GiB): once the
    /// keyspace's history takes more, the NOSPACE alarm is raised and writes that take space
    /// are refused until it is cleared (`etcdctl alarm disarm`) — compact first.
    pub quota_backend_bytes: u64,
    /// How often the leader compares every member's keyspace hash (etcd's
    /// `--corrupt-check-interval`); 0, the default, is off, as in etcd. A mismatch raises
    /// the CORRUPT alarm for the member that differs.
    #[serde(with = "humantime_serde")]
    pub corrupt_check_interval: Duration,
    /// TLS for the client and peer ports (etcd's `--cert-file`, `--peer-cert-file`, ...).
    pub tls: crate::tls::TlsSettings,
}

/// etcd's default space quota.
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 << 30;

/// Back-pressure (docs/design.md, Back-pressure). Past any of these bounds a request is refused
/// at once with ResourceExhausted "etcdserver: too many requests" instead of queueing without
/// limit. Defaults are far above what 64 clients per node need, so they cost no throughput.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackpressureConfig {
    /// Most writes queued or being proposed on this node's Raft (client writes while it leads,
    /// and writes forwarded to it by followers), and, on a follower, most writes queued or in
    /// flight to the leader. Each queue is bounded on its own.
    pub queue_commands: usize,
    /// The same queues bounded by the commands' estimated size, in bytes. A single command
    /// larger than this is still taken when its queue is empty.
    pub queue_bytes: usize,
    /// Most linearizable reads (and read barriers) waiting for a read-index round on this node.
    pub read_queue: usize,
    /// Most client calls handled at once on the client port, across all connections; a call
    /// past it is refused at once. Unary calls count until answered; streams (Watch,
    /// LeaseKeepAlive, Registry Subscribe, Snapshot) only while they open.
    pub max_concurrent_requests: usize,
    /// Most client calls handled at once on one connection (counted like the global bound);
    /// further calls on that connection wait for a slot, so one client cannot take the whole
    /// global bound.
    pub max_concurrent_requests_per_connection: usize,
}

impl Default for BackpressureConfig {
    fn default() -> Self {
        BackpressureConfig {
            queue_commands: 8192,
            queue_bytes: 64 << 20,
            read_queue: 8192,
            max_concurrent_requests: 4096,
            max_concurrent_requests_per_connection: 1024,
        }
    }
}

impl BackpressureConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.queue_commands == 0
            || self.queue_bytes == 0
            || self.read_queue == 0
            || self.max_concurrent_requests == 0
            || self.max_concurrent_requests_per_connection == 0
        {
            return Err(invalid("backpressure", "every bound must be ≥ 1"));
        }
        Ok(())
    }
}

/// Watch streams. Memory bound: per watcher, a live queue of at most `queue_events` events
/// and `queue_bytes` bytes (a watcher that would exceed it is fed from history instead); per
/// stream, at most `stream_buffer` responses of about `max_response_bytes` waiting for gRPC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchConfig {
    /// How often watchers created with `progress_notify` get a progress reply when they had
    /// no events since the last one (etcd: 10 minutes).
    #[serde(with = "humantime_serde")]
    pub progress_interval: Duration,
    /// Most watchers on one Watch stream; a create beyond it is answered created + canceled
    /// with a reason. Bounds one client's share of the node.
    pub max_watchers_per_stream: usize,
    /// A watcher's live queue bound, in events.
    pub queue_events: usize,
    /// A watcher's live queue bound, in bytes of keys and values (prev_kv included).
    pub queue_bytes: usize,
    /// Events read from history per catch-up step (rounded up to a whole revision); bounds
    /// how long one step holds the state machine's read lock, and the memory it takes.
    pub catch_up_batch: usize,
    /// A response is cut (between revisions) once its events reach this size. With the
    /// `fragment` option, one revision larger than this is split into fragments; without it
    /// the revision goes whole. etcd uses its max request size (1.5 MiB).
    pub max_response_bytes: usize,
    /// Responses buffered per stream between the hub and gRPC: past this, a client that does
    /// not read holds its stream back (and its watchers move to catch-up).
    pub stream_buffer: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            progress_interval: Duration::from_secs(600),
            max_watchers_per_stream: 10_000,
            queue_events: 1024,
            queue_bytes: 4 << 20,
            catch_up_batch: 1000,
            max_response_bytes: 1536 * 1024,
            stream_buffer: 16,
        }
    }
}

/// Leases. The minimum TTL is not configured: it follows the election timeout
/// ([`NodeConfig::min_lease_ttl_secs`]), as in etcd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaseConfig {
    /// Largest TTL a LeaseGrant may ask for, in seconds; more is OutOfRange
    /// "etcdserver: too large lease TTL" (etcd's limit: 9,000,000,000).
    pub max_ttl_secs: i64,
    /// How often the leader looks for leases past their deadline. Expiry is proposed at most
    /// this long after a deadline (plus one Raft commit), and everything found in one look goes
    /// into one log entry.
    #[serde(with = "humantime_serde")]
    pub reap_interval: Duration,
    /// Most leases expired by one log entry (all their keys are deleted in one revision).
    pub expire_batch_max: usize,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            max_ttl_secs: 9_000_000_000,
            reap_interval: Duration::from_millis(100),
            expire_batch_max: 10_000,
        }
    }
}

/// Raft timing. Defaults suit a 3-node cluster in containers (openraft's own defaults are too
/// tight there) and recover from a leader's death in ~1.4 s. openraft keeps a follower from
/// voting until `election_max` has passed since it last heard the leader (its leader lease), so
/// a candidate that times out earlier is refused once: failover takes about
/// `election_min + election_max`. A narrow range keeps that short; pre-vote keeps a partitioned
/// node from disturbing the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTiming {
    /// Leader heartbeat interval.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Election timeout, lower bound.
    #[serde(with = "humantime_serde")]
    pub election_min: Duration,
    /// Election timeout, upper bound.
    #[serde(with = "humantime_serde")]
    pub election_max: Duration,
    /// Deadline for installing one snapshot on a follower.
    #[serde(with = "humantime_serde")]
    pub install_snapshot_timeout: Duration,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_every_entries: u64,
    /// Log entries kept behind a snapshot (so a briefly lagging follower catches up from the
    /// log, not a snapshot); older entries are purged.
    pub logs_kept_after_snapshot: u64,
    /// Send new entries to followers as soon as they are in the leader's log, before the
    /// leader's own fsync, so the leader's and the followers' fsyncs overlap instead of adding
    /// up (the leader counts itself in the quorum only once flushed). openraft's default is off.
    pub broadcast_on_append: bool,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(600),
            election_max: Duration::from_millis(700),
            install_snapshot_timeout: Duration::from_secs(30),
            // etcd's --snapshot-count. A snapshot costs a scan and a file of the whole state
            // whatever changed: every 10,000 entries, at 300,000 keys, that was 93 MB each time.
            snapshot_every_entries: 100_000,
            // etcd's catch-up entries: a follower this far behind catches up from the log
            // instead of being sent the whole state.
            logs_kept_after_snapshot: 5_000,
            broadcast_on_append: true,
        }
    }
}

impl RaftTiming {
    /// Fast timing for in-process tests on loopback. openraft uses the heartbeat interval as
    /// the append RPC deadline, so it must stay above a follower's fsync time.
    pub fn fast_for_tests() -> Self {
        RaftTiming {
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(500),
            election_max: Duration::from_millis(1000),
            ..Default::default()
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: 1,
            data_dir: PathBuf::from(".data/node1"),
            listen: SocketAddr::from(([127, 0, 0, 1], 2379)),
            advertise: None,
            peer_listen: SocketAddr::from(([127, 0, 0, 1], 2380)),
            peer_advertise: None,
            peer_token_file: None,
            create_peer_token: false,
            http_listen: None,
            initial_cluster: BTreeMap::new(),
            cluster_name: "muster".to_string(),
            raft: RaftTiming::default(),
            limits: Limits::default(),
            leader_wait: Duration::from_secs(5),
            join: false,
            lease: LeaseConfig::default(),
            watch: WatchConfig::default(),
            store_cache_bytes: 64 * 1024 * 1024,
            backpressure: BackpressureConfig::default(),
            auto_compaction: Default::default(),
            quota_backend_bytes: 0,
            corrupt_check_interval: Duration::ZERO,
            tls: Default::default(),
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("config {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl NodeConfig {
    /// The space quota in bytes (the default when `quota_backend_bytes` is 0).
    pub fn quota_bytes(&self) -> u64 {
        match self.quota_backend_bytes {
            0 => DEFAULT_QUOTA_BACKEND_BYTES,
            q => q,
        }
    }

    /// Checks the configuration for contradictions.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(invalid("node_id", "must be ≥ 1"));
        }
        if !self.initial_cluster.is_empty() && !self.initial_cluster.contains_key(&self.node_id) {
            return Err(invalid(
                "initial_cluster",
                format!("does not list this node's id {}", self.node_id),
            ));
        }
        if self.initial_cluster.contains_key(&0) {
            return Err(invalid("initial_cluster", "node id 0 is not allowed"));
        }
        if self.peer_token_file.is_none()
            && !self.tls.peer_mtls()
            && (self.initial_cluster.len() > 1 || self.join)
        {
            return Err(invalid(
                "peer_token_file",
                "required for a cluster of more than one node (every node holds the same \
                 secret), unless peers use mutual TLS (peer_client_cert_auth)",
            ));
        }
        if let Err(e) = self.tls.validate() {
            return Err(invalid("tls", e.to_string()));
        }
        let r = &self.raft;
        if r.election_min <= r.heartbeat * 2 {
            return Err(invalid(
                "raft.election_min",
                "must exceed twice the heartbeat interval",
            ));
        }
        if r.election_max <= r.election_min {
            return Err(invalid(
                "raft.election_max",
                "must exceed raft.election_min",
            ));
        }
        if self.limits.max_txn_ops == 0
            || self.limits.max_key_bytes == 0
            || self.limits.max_request_bytes == 0
        {
            return Err(invalid("limits", "every limit must be ≥ 1"));
        }
        let l = &self.lease;
        if l.max_ttl_secs < self.min_lease_ttl_secs() {
            return Err(invalid(
                "lease.max_ttl_secs",
                format!(
                    "must be at least the minimum TTL, {} s (1.5 × raft.election_max)",
                    self.min_lease_ttl_secs()
                ),
            ));
        }
        if l.reap_interval.is_zero() || l.reap_interval >= r.election_min {
            return Err(invalid(
                "lease.reap_interval",
                "must be above zero and below raft.election_min",
            ));
        }
        if l.expire_batch_max == 0 {
            return Err(invalid("lease.expire_batch_max", "must be ≥ 1"));
        }
        let w = &self.watch;
        if w.progress_interval.is_zero() {
            return Err(invalid("watch.progress_interval", "must be above zero"));
        }
        if w.max_watchers_per_stream == 0
            || w.queue_events == 0
            || w.queue_bytes == 0
            || w.catch_up_batch == 0
            || w.max_response_bytes == 0
            || w.stream_buffer == 0
        {
            return Err(invalid("watch", "every bound must be ≥ 1"));
        }
        self.backpressure.validate()?;
        Ok(())
    }

    /// The shortest lease TTL, in seconds: ⌈1.5 × the longest election timeout⌉, as etcd
    /// derives it, so a lease outlives the election that follows a leader's death. Shorter
    /// requests are raised to it.
    pub fn min_lease_ttl_secs(&self) -> i64 {
        let ms = self.raft.election_max.as_millis().saturating_mul(3) / 2;
        i64::try_from(ms.div_ceil(1000)).unwrap_or(i64::MAX).max(1)
    }

    /// Parses `1=127.0.0.1:2380,2=127.0.0.1:22380` into id → peer address.
    pub fn parse_initial_cluster(s: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
        let mut out = BTreeMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, addr) = part.split_once('=').ok_or_else(|| {
                invalid("initial_cluster", format!("`{part}` is not id=host:port"))
            })?;
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| invalid("initial_cluster", format!("`{id}` is not a node id")))?;
            if out.insert(id, addr.trim().to_string()).is_some() {
                return Err(invalid(
                    "initial_cluster",
                    format!("node id {id} listed twice"),
                ));
            }
        }
        Ok(out)
    }

    /// The etcd-style cluster id: a stable hash of the cluster name and the initial members.
    pub fn cluster_id(&self) -> u64 {
        // FNV-1a: stable across builds and platforms (std's hasher is not).
        let mut h: u64 = 0xcbf29ce484222325;
        for b in self.cluster_name.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_initial_cluster() {
        let m = NodeConfig::parse_initial_cluster("1=127.0.0.1:2379, 2=127.0.0.1:22379")
            .expect("parse");
        assert_eq!(m.get(&2).map(String::as_str), Some("127.0.0.1:22379"));
        assert!(NodeConfig::parse_initial_cluster("1=a,1=b").is_err());
        assert!(NodeConfig::parse_initial_cluster("x=a").is_err());
        assert!(NodeConfig::parse_initial_cluster("1").is_err());
    }

    #[test]
    fn a_multi_node_cluster_needs_a_peer_token() {
        let c = NodeConfig {
            initial_cluster: [(1, "a:2380".to_string()), (2, "b:2380".to_string())].into(),
            ..Default::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                field: "peer_token_file",
                ..
            })
        ));
        let c = NodeConfig {
            peer_token_file: Some("token".into()),
            ..c
        };
        assert_eq!(c.validate(), Ok(()));
        let joiner = NodeConfig {
            join: true,
            ..Default::default()
        };
        assert!(joiner.validate().is_err());
        // Mutual TLS between peers replaces the token; peer TLS alone does not.
        let mut tls = NodeConfig {
            peer_token_file: None,
            ..c
        };
        tls.tls.peer_cert_file = Some("p.crt".into());
        tls.tls.peer_key_file = Some("p.key".into());
        tls.tls.peer_trusted_ca_file = Some("ca.crt".into());
        assert!(tls.validate().is_err());
        tls.tls.peer_client_cert_auth = true;
        assert_eq!(tls.validate(), Ok(()));
    }

    #[test]
    fn tls_settings_are_checked() {
        let mut c = NodeConfig::default();
        c.tls.cert_file = Some("a.crt".into());
        assert!(c.validate().is_err(), "a certificate without its key");
        c.tls.key_file = Some("a.key".into());
        assert_eq!(c.validate(), Ok(()));
        c.tls.client_cert_auth = true;
        assert!(
            c.validate().is_err(),
            "client_cert_auth without a trusted CA"
        );
        c.tls.trusted_ca_file = Some("ca.crt".into());
        assert_eq!(c.validate(), Ok(()));
        c.tls.min_version = "TLS1.1".into();
        assert!(c.validate().is_err());
        c.tls.min_version = "TLS1.3".into();
        c.tls.cipher_suites = vec!["TLS13_AES_128_GCM_SHA256".into()];
        assert_eq!(c.validate(), Ok(()));
        c.tls.cipher_suites = vec!["TLS_RSA_WITH_RC4_128_SHA".into()];
        assert!(c.validate().is_err(), "a suite rustls does not offer");
    }

    #[test]
    fn validates() {
        assert_eq!(NodeConfig::default().validate(), Ok(()));
        let c = NodeConfig {
            node_id: 0,
            ..Default::default()
        };
        assert!(c.validate().is_err());
        let c = NodeConfig {
            initial_cluster: [(2, "x".to_string())].into(),
            ..Default::default()
        };
        assert!(c.validate().is_err());
        let c = NodeConfig {
            lease: LeaseConfig {
                expire_batch_max: 0,
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn min_lease_ttl_follows_the_election_timeout() {
        // Defaults: election_max 0.7 s → 1.05 s, rounded up to 2 s; tests' 1 s → 1.5 s → 2 s;
        // etcd's 2 s election timeout → 3 s.
        assert_eq!(NodeConfig::default().min_lease_ttl_secs(), 2);
        let etcd_like = NodeConfig {
            raft: RaftTiming {
                election_max: Duration::from_millis(2000),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(etcd_like.min_lease_ttl_secs(), 3);
        let c = NodeConfig {
            raft: RaftTiming::fast_for_tests(),
            ..Default::default()
        };
        assert_eq!(c.min_lease_ttl_secs(), 2);
    }

    #[test]
    fn validates_watch_bounds() {
        let mut c = NodeConfig::default();
        c.watch.queue_events = 0;
        assert!(c.validate().is_err());
        let mut c = NodeConfig::default();
        c.watch.progress_interval = Duration::ZERO;
        assert!(c.validate().is_err());
        let c: NodeConfig =
            toml::from_str("[watch]\nprogress_interval = \"2s\"\nmax_watchers_per_stream = 5\n")
                .expect("toml");
        assert_eq!(c.watch.progress_interval, Duration::from_secs(2));
        assert_eq!(c.watch.max_watchers_per_stream, 5);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn validates_backpressure_bounds() {
        let mut c = NodeConfig::default();
        c.backpressure.queue_bytes = 0;
        assert!(c.validate().is_err());
        let mut c = NodeConfig::default();
        c.backpressure.max_concurrent_requests = 0;
        assert!(c.validate().is_err());
        let c: NodeConfig =
            toml::from_str("[backpressure]\nqueue_commands = 64\nread_queue = 32\n").expect("toml");
        assert_eq!(c.backpressure.queue_commands, 64);
        assert_eq!(c.backpressure.read_queue, 32);
        assert_eq!(
            c.backpressure.queue_bytes,
            BackpressureConfig::default().queue_bytes
        );
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn toml_round_trip_with_human_durations() {
        let c: NodeConfig =
            toml::from_str("node_id = 3\n[raft]\nheartbeat = \"50ms\"\n").expect("toml");
        assert_eq!(c.node_id, 3);
        assert_eq!(c.raft.heartbeat, Duration::from_millis(50));
        assert_eq!(c.raft.election_min, RaftTiming::default().election_min);
    }
}
