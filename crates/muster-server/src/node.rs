//! Node assembly: opens sled, the log store and the state machine, starts openraft, and
//! bootstraps the cluster on first start. Holds the handles every service uses.

use openraft::async_runtime::watch::WatchReceiver;
use std::collections::BTreeMap;
use std::sync::Arc;

use muster_store::raft::file_log::FileLogStore;
use muster_store::raft::state_machine::{SmShared, StateMachineStore};
use muster_store::raft::{Member, NodeId, Raft};
use openraft::SnapshotPolicy;

use crate::admission::ClientPermits;
use crate::config::NodeConfig;
use crate::network::{NetworkFactory, PeerChannels};
use crate::peer_auth::{PeerToken, PeerTokenError};
use crate::propose::{Proposer, QueueBound};

/// Failure to start a node.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("opening data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("opening sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("opening storage: {0}")]
    Storage(#[from] std::io::Error),
    #[error("raft config: {0}")]
    RaftConfig(#[from] openraft::ConfigError),
    #[error("starting raft: {reason}")]
    Raft { reason: String },
    #[error(transparent)]
    PeerToken(#[from] PeerTokenError),
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// One running Muster node's core: Raft, the state machine and peer channels. Its parts are
/// the crate's own; other crates (front doors, tests) reach them through the methods below.
pub struct Node {
    pub(crate) id: NodeId,
    pub(crate) raft: Raft,
    /// Batches this node's proposals into log entries (see [`crate::propose`]).
    pub(crate) proposer: Proposer,
    /// A follower's batched forwards to the leader.
    pub(crate) forwarders: crate::write::Forwarders,
    /// Read-index rounds shared by concurrent linearizable reads (see [`crate::read`]).
    pub(crate) read_rounds: crate::read::ReadRounds,
    /// The client port's global bound on calls handled at once (see [`crate::admission`]).
    pub(crate) client_permits: Arc<crate::admission::ClientPermits>,
    pub(crate) sm: Arc<SmShared>,
    pub(crate) config: NodeConfig,
    /// The address clients reach this node at (its client port).
    pub(crate) advertise: String,
    /// The address peers reach this node at (its peer port); its address in the membership.
    pub(crate) peer_advertise: String,
    pub(crate) peers: Arc<PeerChannels>,
    /// TLS configs of both ports (empty when TLS is off).
    pub(crate) tls: Arc<crate::tls::NodeTls>,
    pub(crate) cluster_id: u64,
    /// The node's sled database (for size reporting and flushes).
    pub(crate) db: sled::Db,
    /// Set when the leader tells this node it was removed from the cluster.
    pub(crate) removed_flag: std::sync::atomic::AtomicBool,
    pub(crate) removed: tokio::sync::Notify,
    /// Set once this node has seen itself in a membership.
    pub(crate) was_member: std::sync::atomic::AtomicBool,
    /// Held by each membership change this node runs as leader: openraft's two-step changes
    /// fail ("last membership log id mismatch") when another change lands between the steps,
    /// e.g. a member publishing its client address during a promote.
    pub(crate) membership_changes: tokio::sync::Mutex<()>,
}

impl Node {
    /// Opens storage and starts Raft. `advertise` and `peer_advertise` are this node's
    /// reachable client and peer addresses; `peer_message_bytes` bounds peer messages.
    pub async fn open(
        config: NodeConfig,
        advertise: String,
        peer_advertise: String,
        peer_message_bytes: usize,
    ) -> Result<Arc<Node>, StartError> {
        config.validate()?;
        let token = PeerToken::load(&config)?;
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| StartError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        let db = sled::Config::new()
            .path(dir.join(muster_store::raft::DB_DIR))
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(config.store_cache_bytes)
            .open()?;
        let log_store = FileLogStore::open(&dir.join(muster_store::raft::LOG_DIR))?;
        let sm = StateMachineStore::open(&db, dir)?;
        sm.hold_writes_until_durable(log_store.durable_index());
        let shared = sm.shared();

        let raft_config = openraft::Config {
            cluster_name: config.cluster_name.clone(),
            heartbeat_interval: config.raft.heartbeat.as_millis() as u64,
            election_timeout_min: config.raft.election_min.as_millis() as u64,
            election_timeout_max: config.raft.election_max.as_millis() as u64,
            install_snapshot_timeout: config.raft.install_snapshot_timeout.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.raft.snapshot_every_entries),
            max_in_snapshot_log_to_keep: config.raft.logs_kept_after_snapshot,
            enable_pre_vote: Some(true),
            broadcast_submitted_on_append: Some(config.raft.broadcast_on_append),
            // A restarted leader must win a new election (standard Raft): neither the
            // committed log id nor every applied entry is durable (docs/design.md, Storage),
            // so a leader restored without one could serve reads from a stale state machine.
            enable_leader_restore: Some(false),
            ..Default::default()
        }
        .validate()?;

        let tls = Arc::new(crate::tls::NodeTls::load(&config.tls)?);
        let peers = Arc::new(PeerChannels::new(
            token,
            peer_message_bytes,
            tls.peer_client.clone(),
        ));
        let network = NetworkFactory {
            peers: peers.clone(),
            append_timeout_floor: config.raft.election_min,
        };
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            network,
            log_store,
            sm,
        )
        .await
        .map_err(|e| StartError::Raft {
            reason: e.to_string(),
        })?;

        let bp = &config.backpressure;
        let queue_bound = QueueBound {
            commands: bp.queue_commands,
            bytes: bp.queue_bytes,
        };
        let read_queue = bp.read_queue;
        let client_permits = Arc::new(ClientPermits::new(bp.max_concurrent_requests));
        let node = Arc::new_cyclic(|weak| Node {
            id: config.node_id,
            read_rounds: crate::read::ReadRounds::start(weak.clone(), read_queue),
            client_permits,
            proposer: Proposer::start(raft.clone(), queue_bound, config.leader_wait),
            forwarders: Default::default(),
            raft,
            sm: shared,
            cluster_id: config.cluster_id(),
            advertise,
            peer_advertise,
            peers,
            tls,
            config,
            db,
            removed_flag: std::sync::atomic::AtomicBool::new(false),
            removed: tokio::sync::Notify::new(),
            was_member: std::sync::atomic::AtomicBool::new(false),
            membership_changes: tokio::sync::Mutex::new(()),
        });
        node.bootstrap().await?;
        Ok(node)
    }

    /// On first start with an empty log, the lowest id in the initial cluster initialises it;
    /// every other node waits to be contacted. A restarted node ignores the bootstrap config.
    async fn bootstrap(&self) -> Result<(), StartError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft {
                reason: e.to_string(),
            })?;
        if initialized {
            tracing::info!(
                node_id = self.id,
                "recovered from data dir; bootstrap config ignored"
            );
            return Ok(());
        }
        if self.config.join {
            tracing::info!(
                node_id = self.id,
                "joining: waiting to be added by the cluster's leader"
            );
            return Ok(());
        }
        let mut members: BTreeMap<NodeId, Member> = self
            .config
            .initial_cluster
            .iter()
            .map(|(id, addr)| (*id, Member::new(addr)))
            .collect();
        // The others publish their client addresses once they run (`publish_client_addr`).
        members
            .entry(self.id)
            .or_insert_with(|| Member::new(&self.peer_advertise))
            .client_addr = self.advertise.clone();
        let first = members.keys().next().copied();
        if first != Some(self.id) {
            tracing::info!(
                node_id = self.id,
                "waiting for node {:?} to initialise the cluster",
                first
            );
            return Ok(());
        }
        tracing::info!(node_id = self.id, members = ?members.keys().collect::<Vec<_>>(), "initialising cluster");
        self.raft
            .initialize(members)
            .await
            .map_err(|e| StartError::Raft {
                reason: e.to_string(),
            })?;
        Ok(())
    }

    /// This node's id in the cluster.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This node's Raft handle (metrics, triggers; writes go through [`Node::write`]).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The state machine (reads; never hold its lock across an `.await`).
    pub fn sm(&self) -> &Arc<SmShared> {
        &self.sm
    }

    /// The configuration this node was started with.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The address clients reach this node at (its client port).
    pub fn advertise(&self) -> &str {
        &self.advertise
    }

    /// The address peers reach this node at (its address in the membership).
    pub fn peer_advertise(&self) -> &str {
        &self.peer_advertise
    }

    /// This node's channels to its peers, and their fault injection (tests).
    pub fn peers(&self) -> &Arc<PeerChannels> {
        &self.peers
    }

    /// The cluster id (etcd's header field).
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// The node's sled database (size reporting, flushes).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The proposal queue's counters.
    pub fn proposal_stats(&self) -> &crate::propose::BatchStats {
        self.proposer.stats()
    }

    /// The forward queues' counters.
    pub fn forward_stats(&self) -> &crate::propose::BatchStats {
        self.forwarders.stats()
    }

    /// The read-index rounds' counters.
    pub fn read_round_stats(&self) -> &crate::read::ReadRoundStats {
        self.read_rounds.stats()
    }

    /// The client port's concurrency bound: calls in flight and refused.
    pub fn client_permits(&self) -> &crate::admission::ClientPermits {
        &self.client_permits
    }

    /// The current leader's id and membership entry (peer and client address), if known.
    pub fn leader(&self) -> Option<(NodeId, Member)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let id = m.current_leader?;
        let leader = m.membership_config.membership().get_node(&id).cloned()?;
        Some((id, leader))
    }

    /// The leader this node knows of.
    pub fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// Index of this node's last log entry.
    pub fn last_log_index(&self) -> Option<u64> {
        self.raft.metrics().borrow_watched().last_log_index
    }

    /// Index of the last entry applied to this node's state machine.
    pub fn applied_index(&self) -> Option<u64> {
        self.raft
            .metrics()
            .borrow_watched()
            .last_applied
            .as_ref()
            .map(|l| l.index)
    }

    /// Index of the last log entry covered by this node's latest snapshot.
    pub fn snapshot_index(&self) -> Option<u64> {
        self.raft
            .metrics()
            .borrow_watched()
            .snapshot
            .as_ref()
            .map(|l| l.index)
    }

    /// Index up to which this node's log has been purged.
    pub fn purged_index(&self) -> Option<u64> {
        self.raft
            .metrics()
            .borrow_watched()
            .purged
            .as_ref()
            .map(|l| l.index)
    }

    /// Waits until this node has applied `index`, or `timeout` passes.
    pub async fn wait_applied(&self, index: Option<u64>, timeout: std::time::Duration) -> bool {
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(index, "applied")
            .await
            .is_ok()
    }

    /// The current Raft term.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow_watched().current_term
    }

    /// Stops Raft. Storage handles are released when the last `Arc<Node>` is dropped.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(node_id = self.id, "raft shutdown: {e}");
        }
    }
}
