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
    /// gRPC listen address for clients and peers (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Address other nodes and clients use to reach this node; defaults to the bound address.
    pub advertise: Option<String>,
    /// HTTP listen address for /health, /ready and /metrics; `None` disables HTTP.
    pub http_listen: Option<SocketAddr>,
    /// The initial members, id → gRPC address. Used only on first start with an empty data dir;
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
}

/// Raft timing. Defaults suit a 3-node cluster in containers (openraft's own defaults are too
/// tight there).
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
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat: Duration::from_millis(250),
            election_min: Duration::from_millis(1000),
            election_max: Duration::from_millis(2000),
            install_snapshot_timeout: Duration::from_secs(30),
            snapshot_every_entries: 10_000,
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
            http_listen: None,
            initial_cluster: BTreeMap::new(),
            cluster_name: "muster".to_string(),
            raft: RaftTiming::default(),
            limits: Limits::default(),
            leader_wait: Duration::from_secs(5),
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
        Ok(())
    }

    /// Parses `1=127.0.0.1:2379,2=127.0.0.1:22379` into id → address.
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
    }

    #[test]
    fn toml_round_trip_with_human_durations() {
        let c: NodeConfig =
            toml::from_str("node_id = 3\n[raft]\nheartbeat = \"100ms\"\n").expect("toml");
        assert_eq!(c.node_id, 3);
        assert_eq!(c.raft.heartbeat, Duration::from_millis(100));
        assert_eq!(c.raft.election_min, Duration::from_millis(1000));
    }
}
