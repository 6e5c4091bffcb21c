//! The maintenance service: alarms (list, raise, clear), the hash of its keyspace (etcd's
//! HashKV, for comparing members), and moving the leadership to another member (etcd's
//! MoveLeader).

use std::sync::Arc;
use std::time::Duration;

use muster_types::{
    Alarm, AlarmAction, AlarmMember, Command, KeyRange, RangeRequest, ResponseBody,
};
use openraft::async_runtime::watch::WatchReceiver;
use tokio::time::Instant;

use crate::admission::request_deadline;
use crate::error::{RaftPathError, ServerError};
use crate::node::Node;
use crate::services::body;
use muster_store::raft::state_machine::BackupSummary;

/// Keys hashed per read-lock hold: a hash of a large keyspace never holds applies back for
/// long.
const HASH_CHUNK_KEYS: i64 = 1_000;

/// The hash of a node's keyspace as of one revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyspaceHash {
    /// CRC-32 over every key-value live at `revision`, in key order, with its metadata.
    pub hash: u32,
    /// The revision hashed.
    pub revision: i64,
    /// The node's compact revision when the hash started.
    pub compact_revision: i64,
    /// The node's current revision when the hash started.
    pub current_revision: i64,
}

/// Maintenance operations of one node.
#[derive(Clone)]
pub struct Maintenance {
    node: Arc<Node>,
}

impl Maintenance {
    pub fn new(node: Arc<Node>) -> Maintenance {
        Maintenance { node }
    }

    /// The hash of this node's keyspace at `revision` (0: its current revision). Every member
    /// that has applied `revision` gives the same hash unless its state diverged. It covers
    /// what reads at `revision` see — every key, value, create and mod revision, version and
    /// lease — not the history below it (which compaction removes on each node at its own
    /// pace). Fails with "required revision has been compacted" (or "is a future revision")
    /// as a Range at that revision would.
    /// Runs on the blocking pool: hashing a large keyspace takes seconds, which must not stall
    /// a runtime worker (heartbeats run there).
    pub async fn hash_kv(&self, revision: i64) -> Result<KeyspaceHash, ServerError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.hash_kv_now(revision))
            .await
            .map_err(|e| RaftPathError::Internal {
                reason: format!("keyspace hash task: {e}"),
            })?
    }

    fn hash_kv_now(&self, revision: i64) -> Result<KeyspaceHash, ServerError> {
        let (current_revision, compact_revision) = {
            let sm = self.node.sm.read();
            (sm.mvcc.current_revision(), sm.mvcc.compact_revision())
        };
        let revision = if revision <= 0 {
            current_revision
        } else {
            revision
        };
        let mut hasher = crc32fast::Hasher::new();
        let mut from = vec![0];
        loop {
            let req = RangeRequest {
                range: KeyRange::new(from, vec![0]),
                revision,
                limit: HASH_CHUNK_KEYS,
                ..Default::default()
            };
            let chunk = self.node.sm.read().mvcc.range(&req)??;
            for kv in &chunk.kvs {
                // Lengths first, so that no two different keyspaces feed the same bytes.
                for bytes in [&kv.key, &kv.value] {
                    hasher.update(&(bytes.len() as u64).to_le_bytes());
                    hasher.update(bytes);
                }
                for n in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
                    hasher.update(&n.to_le_bytes());
                }
            }
            match chunk.kvs.last() {
                Some(last) if chunk.more => {
                    from = last.key.clone();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(KeyspaceHash {
            hash: hasher.finalize(),
            revision,
            compact_revision,
            current_revision,
        })
    }

    /// A backup of this node's state as of its last applied entry (etcd's Snapshot, which
    /// also serves the called member's own state), with what it holds.
    pub async fn backup(&self) -> Result<(Vec<u8>, BackupSummary), ServerError> {
        self.node.sm.backup().await.map_err(ServerError::Backup)
    }

    /// Every raised alarm, with the revision the answer was read at.
    pub fn alarms(&self) -> (i64, Vec<AlarmMember>) {
        let sm = self.node.sm.read();
        (sm.mvcc.current_revision(), sm.mvcc.alarms())
    }

    /// Raises or clears `member_id`'s `alarm` through the log (etcd's Alarm ACTIVATE and
    /// DEACTIVATE); returns the alarm if that changed it (etcd answers an empty list when it
    /// was already raised / not raised). `alarm` None (etcd's NONE) changes nothing.
    pub async fn set_alarm(
        &self,
        action: AlarmAction,
        member_id: u64,
        alarm: Option<Alarm>,
    ) -> Result<(i64, Vec<AlarmMember>), ServerError> {
        let Some(alarm) = alarm else {
            let (revision, _) = self.alarms();
            return Ok((revision, vec![]));
        };
        let cmd = Command::Alarm {
            action,
            member_id,
            alarm,
        };
        match body(self.node.write(cmd).await?)? {
            (revision, ResponseBody::Alarm(changed)) => {
                Ok((revision, changed.into_iter().collect()))
            }
            _ => Err(ServerError::UnexpectedResponse { expected: "alarm" }),
        }
    }

    /// Makes `target` the leader. Asked of the leader (as etcd, which answers "not leader"
    /// elsewhere: `etcdctl move-leader` finds the leader itself); `target` must be a voter.
    /// Returns once this node sees `target` lead, or Timeout at min(`leader_wait`, the
    /// client's deadline).
    pub async fn move_leader(&self, target: u64) -> Result<(), ServerError> {
        let node = &self.node;
        let mut metrics = node.raft.metrics();
        {
            let m = metrics.borrow_watched();
            if m.current_leader != Some(node.id) {
                return Err(ServerError::NotLeaderForMove);
            }
            if !m
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == target)
            {
                return Err(ServerError::BadLeaderTransferee);
            }
        }
        if target == node.id {
            return Ok(());
        }
        let deadline = request_deadline(node.config.leader_wait);
        tracing::info!(node_id = node.id, target, "moving the leadership");
        node.raft
            .trigger()
            .transfer_leader(target)
            .await
            .map_err(|e| RaftPathError::Fatal {
                reason: e.to_string(),
            })?;
        loop {
            if metrics.borrow_watched().current_leader == Some(target) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(RaftPathError::Fatal {
                        reason: "raft stopped".into(),
                    }
                    .into())
                }
                Err(_) => return Err(RaftPathError::Timeout.into()),
            }
        }
    }
}

/// How long a graceful stop waits for the leadership to move before stopping anyway.
pub const STOP_HANDOFF: Duration = Duration::from_secs(3);

/// Hands the leadership to the most up-to-date other voter, if this node leads; waits up to
/// `within`. Used when a node stops, so that stopping the leader costs no election timeout.
pub async fn hand_off_leadership(node: &Arc<Node>, within: Duration) {
    let target = {
        let m = node.raft.metrics().borrow_watched().clone();
        if m.current_leader != Some(node.id) {
            return;
        }
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        // The follower with the highest matched log index catches up soonest.
        let matched = |id: &u64| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map(|l| l.index)
        };
        voters
            .into_iter()
            .filter(|id| *id != node.id)
            .max_by_key(|id| matched(id))
    };
    let Some(target) = target else { return };
    let deadline = Instant::now() + within;
    let maintenance = Maintenance::new(node.clone());
    match tokio::time::timeout_at(deadline, maintenance.move_leader(target)).await {
        Ok(Ok(())) => tracing::info!(node_id = node.id, target, "leadership handed off"),
        Ok(Err(e)) => tracing::warn!(node_id = node.id, target, "leadership hand-off: {e}"),
        Err(_) => tracing::warn!(node_id = node.id, target, "leadership hand-off timed out"),
    }
}
