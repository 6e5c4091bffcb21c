//! The write path and the linearizable-read barrier.
//!
//! A write goes to the local Raft if this node leads; otherwise it is forwarded, one hop, to
//! the leader (`RaftTransport.ForwardStream`, see [`crate::forward_stream`]). The leader never
//! forwards again: if leadership moved, the caller gets Unavailable with a leader hint. While no
//! leader is known (an election), the request waits up to `leader_wait` for one.
//!
//! A linearizable read asks the leader for a read index (read-index protocol: the leader
//! confirms its leadership with a quorum), in a round shared with concurrent reads
//! ([`crate::read::ReadRounds`]), then waits until the local state machine has applied that far
//! and serves locally.
//!
//! Every wait here is bounded: a write and a read barrier by min(`leader_wait`, the client's
//! deadline) ([`crate::admission::request_deadline`]), a forward's answer and a read-index
//! round by `leader_wait`. A bound that expires is Unavailable: "request timed out" when the
//! outcome is unknown, "no leader" / "leader unreachable" when nothing was sent.

use std::time::Duration;

use muster_store::raft::LogId;
use muster_types::{Alarm, AlarmAction, AlarmMember, ApplyError, Command, CommandResponse};
use openraft::ReadPolicy;
use tokio::time::Instant;

use crate::admission::request_deadline;
use crate::error::{RaftPathError, ServerError};
use crate::forward_stream::ForwardStream;
use crate::network::call;
use crate::network::PeerChannels;
use crate::node::Node;
use crate::propose::{BatchQueue, BatchStats, QueueBound, QueueErrors};
use crate::route::{Hop, Retry};
use std::sync::Arc;

fn forward_internal(reason: String) -> Hop {
    Hop::Failed(RaftPathError::Internal { reason })
}

/// Forwarded messages a follower keeps open at once. Forwards are cheap messages on one
/// stream, and holding them back makes them miss the leader's next batch: measured at 16
/// clients over 3 nodes, 2 in flight gave ~2,400 puts/s and 64 gave ~3,500 (docs/design.md).
/// The leader bounds each stream too (`grpc/raft_service.rs`).
const FORWARDS_IN_FLIGHT: usize = 64;

/// A follower's forward queues, one per leader address: writes that queue up while
/// [`FORWARDS_IN_FLIGHT`] are open travel to the leader as one message on its `ForwardStream`
/// carrying a [`Command::Batch`] (see [`crate::propose`]).
#[derive(Default)]
pub struct Forwarders {
    queues: std::sync::Mutex<std::collections::HashMap<String, BatchQueue<Hop>>>,
    stats: Arc<BatchStats>,
}

impl Forwarders {
    /// Commands forwarded and the messages that carried them.
    pub fn stats(&self) -> &BatchStats {
        &self.stats
    }

    /// The queue to the leader at `addr`, holding at most `bound`; each forward waits at most
    /// `answer_timeout` for the leader's answer.
    fn queue(
        &self,
        peers: &Arc<PeerChannels>,
        addr: &str,
        bound: QueueBound,
        answer_timeout: Duration,
    ) -> BatchQueue<Hop> {
        let mut queues = self
            .queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(q) = queues.get(addr) {
            return q.clone();
        }
        // Leaders change rarely and addresses are members': the map stays small, but drop
        // queues of other addresses so a long-lived follower does not collect them.
        queues.clear();
        let stream = Arc::new(ForwardStream::new(
            peers.clone(),
            addr.to_string(),
            answer_timeout,
        ));
        let q = BatchQueue::start(
            move |cmd| {
                let stream = stream.clone();
                async move { stream.send(&cmd).await }
            },
            FORWARDS_IN_FLIGHT,
            bound,
            QueueErrors {
                make: forward_internal,
                full: Hop::Failed(RaftPathError::TooManyRequests),
            },
            self.stats.clone(),
        );
        queues.insert(addr.to_string(), q.clone());
        q
    }
}

impl Node {
    /// Proposes `cmd` on this node's Raft (batched with concurrent proposals, see
    /// [`crate::propose`]); fails with NotLeader when it does not lead, and with
    /// TooManyRequests at once when the proposal queue is full.
    pub async fn write_local(&self, cmd: Command) -> Result<CommandResponse, RaftPathError> {
        self.proposer.propose(cmd).await
    }

    /// Like [`Node::write_local`], never refused for a full queue: for the lease keeper's
    /// expiries, which clients flooding the node must not hold back (the keeper bounds them).
    pub async fn write_local_exempt(&self, cmd: Command) -> Result<CommandResponse, RaftPathError> {
        self.proposer.propose_exempt(cmd).await
    }

    /// A client's write: validated ([`muster_types::Limits::check_command`], which also refuses
    /// commands only the leader originates), then applied through the cluster.
    pub async fn write(&self, cmd: Command) -> Result<CommandResponse, ServerError> {
        self.config.limits.check_command(&cmd)?;
        self.check_quota(&cmd).await?;
        Ok(self.route_write(cmd).await?)
    }

    /// The space quota, checked on the node the client called (etcd's quota check): a write
    /// that takes space and would pass the quota is refused with NoSpace, and this member's
    /// NOSPACE alarm is raised through the log, so every node refuses such writes from then
    /// on until it is cleared. Writes that free space always pass.
    async fn check_quota(&self, cmd: &Command) -> Result<(), ServerError> {
        if !cmd.stopped_by(Alarm::NoSpace) {
            return Ok(());
        }
        let quota = self.config.quota_bytes();
        let used = self.sm.read().mvcc.space_used();
        if used.saturating_add(cmd.approx_size() as u64) <= quota {
            return Ok(());
        }
        let mine = AlarmMember {
            member_id: self.id,
            alarm: Alarm::NoSpace,
        };
        let raised = self.sm.read().mvcc.alarms().contains(&mine);
        if !raised {
            tracing::warn!(
                node_id = self.id,
                used,
                quota,
                "space quota exceeded: raising NOSPACE"
            );
            let alarm = Command::Alarm {
                action: AlarmAction::Activate,
                member_id: self.id,
                alarm: Alarm::NoSpace,
            };
            self.route_write(alarm).await?;
        }
        Err(ApplyError::NoSpace.into())
    }

    /// A write a follower forwarded: validated again here, since a peer's word is not a
    /// validation, and proposed on this node's Raft only (never a second hop).
    pub async fn write_forwarded(&self, cmd: Command) -> Result<CommandResponse, RaftPathError> {
        if let Err(e) = self.config.limits.check_command(&cmd) {
            tracing::warn!(
                node_id = self.id,
                cmd = cmd.name(),
                "refused a forwarded write: {e}"
            );
            return Err(RaftPathError::Invalid {
                reason: e.to_string(),
            });
        }
        self.write_local(cmd).await
    }

    /// Applies `cmd` through the cluster: locally if leader, else forwarded one hop; gives up
    /// at min(`leader_wait`, the client's deadline).
    async fn route_write(&self, cmd: Command) -> Result<CommandResponse, RaftPathError> {
        self.route(
            request_deadline(self.config.leader_wait),
            Retry::WhenNothingDone,
            |_| self.write_local(cmd.clone()),
            |addr, _| self.forward(addr, &cmd),
        )
        .await
    }

    /// Forwards `cmd` to the leader at `addr` (the caller bounds the wait: past it the
    /// command may be on its way).
    async fn forward(&self, addr: String, cmd: &Command) -> Result<CommandResponse, Hop> {
        let bp = &self.config.backpressure;
        let bound = QueueBound {
            commands: bp.queue_commands,
            bytes: bp.queue_bytes,
        };
        let queue = self
            .forwarders
            .queue(&self.peers, &addr, bound, self.config.leader_wait);
        queue.submit(cmd.clone()).await
    }

    /// On the leader: confirms leadership with a quorum and returns the log id every
    /// linearizable read must observe.
    pub async fn read_index_local(&self) -> Result<LogId, RaftPathError> {
        let linearizer = self.raft.get_read_linearizer(ReadPolicy::ReadIndex).await?;
        Ok(*linearizer.read_log_id().log_id())
    }

    /// Blocks until this node's state machine reflects every write acknowledged before the call;
    /// fails with Timeout at min(`leader_wait`, the client's deadline).
    pub async fn linearizable_barrier(&self) -> Result<(), RaftPathError> {
        let deadline = request_deadline(self.config.leader_wait);
        let read_log_id = tokio::time::timeout_at(deadline, self.read_rounds.read_index())
            .await
            .unwrap_or(Err(RaftPathError::Timeout))?;
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(read_log_id.index), "linearizable read")
            .await
            .map_err(|_| RaftPathError::Timeout)?;
        Ok(())
    }

    /// One read-index round: the log id a linearizable read must observe, from this node's Raft
    /// when it leads, else from the leader; Timeout after `leader_wait`. Called by
    /// [`crate::read::ReadRounds`] only, which shares each round among the reads that arrived
    /// before it started. A read index is not a write: asking again is always safe.
    pub(crate) async fn fetch_read_index(&self) -> Result<LogId, RaftPathError> {
        self.route(
            Instant::now() + self.config.leader_wait,
            Retry::Always,
            |_| self.read_index_local(),
            |addr, deadline| async move {
                let left = deadline.saturating_duration_since(Instant::now());
                let r = call(&self.peers, &addr, left, &(), |mut c, r| async move {
                    c.read_index(r).await
                })
                .await;
                Hop::of_call(&addr, r)
            },
        )
        .await
    }
}
