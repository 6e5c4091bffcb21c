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

use openraft::async_runtime::watch::WatchReceiver;
use std::time::Duration;

use muster_store::raft::{LogId, Member};
use muster_types::{Command, CommandResponse};
use openraft::error::{LinearizableReadError, RaftError};
use openraft::ReadPolicy;
use tokio::time::Instant;

use crate::admission::request_deadline;
use crate::error::{RaftPathError, ServerError};
use crate::forward_stream::{ForwardStream, Forwarded};
use crate::network::call;
use crate::network::PeerChannels;
use crate::node::Node;
use crate::propose::{not_leader, BatchQueue, BatchStats, QueueBound, QueueErrors};
use std::sync::Arc;

fn forward_internal(reason: String) -> Forwarded {
    Forwarded::Failed(RaftPathError::Internal { reason })
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
    queues: std::sync::Mutex<std::collections::HashMap<String, BatchQueue<Forwarded>>>,
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
    ) -> BatchQueue<Forwarded> {
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
                full: Forwarded::Failed(RaftPathError::TooManyRequests),
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
        Ok(self.route_write(cmd).await?)
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
        let deadline = request_deadline(self.config.leader_wait);
        loop {
            // A follower that knows the leader forwards at once; proposing locally first would
            // only cost a round trip through its Raft to learn the same thing.
            let local = match self.leader() {
                Some((id, leader)) if id != self.id => Err(RaftPathError::NotLeader {
                    leader_id: Some(id),
                    leader: Some(leader),
                }),
                // Past the deadline the proposal's outcome is unknown: it may still commit.
                _ => tokio::time::timeout_at(deadline, self.write_local(cmd.clone()))
                    .await
                    .unwrap_or(Err(RaftPathError::Timeout)),
            };
            match local {
                Err(RaftPathError::NotLeader {
                    leader_id: Some(id),
                    leader: Some(Member { addr, .. }),
                }) if id != self.id => match self.forward(&addr, &cmd, deadline).await {
                    // The leader we know of is gone and the request never left this node:
                    // wait for the election to move on, then retry (safe: nothing was sent).
                    Err(Forwarded::NotSent(e)) if Instant::now() < deadline => {
                        tracing::debug!(
                            node_id = self.id,
                            leader = id,
                            "leader unreachable, not sent: {e}"
                        );
                        self.wait_for_leader_change(id, deadline).await;
                    }
                    Err(Forwarded::NotSent(e)) => {
                        return Err(RaftPathError::LeaderUnreachable { addr, reason: e })
                    }
                    // The node we took for leader refused before appending (leadership
                    // moved): nothing was proposed, so trying again is safe.
                    Err(Forwarded::Failed(
                        RaftPathError::NoLeader | RaftPathError::NotLeader { .. },
                    )) if Instant::now() < deadline => {
                        self.wait_for_leader_change(id, deadline).await;
                    }
                    Err(Forwarded::Failed(e)) => return Err(e),
                    Ok(r) => return Ok(r),
                },
                Err(RaftPathError::NoLeader) | Err(RaftPathError::NotLeader { .. }) => {
                    self.wait_for_leader(deadline).await?;
                }
                other => return other,
            }
        }
    }

    /// Waits until this node's view of the leader is no longer `old`, or `deadline`.
    async fn wait_for_leader_change(&self, old: u64, deadline: Instant) {
        let mut metrics = self.raft.metrics();
        while metrics.borrow_watched().current_leader == Some(old) {
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
    }

    /// Forwards `cmd` to the leader at `addr`, giving up at `deadline` (outcome unknown: the
    /// command may be on its way).
    async fn forward(
        &self,
        addr: &str,
        cmd: &Command,
        deadline: Instant,
    ) -> Result<CommandResponse, Forwarded> {
        let bp = &self.config.backpressure;
        let bound = QueueBound {
            commands: bp.queue_commands,
            bytes: bp.queue_bytes,
        };
        let queue = self
            .forwarders
            .queue(&self.peers, addr, bound, self.config.leader_wait);
        tokio::time::timeout_at(deadline, queue.submit(cmd.clone()))
            .await
            .unwrap_or(Err(Forwarded::Failed(RaftPathError::Timeout)))
    }

    /// Waits until some node is known as leader, or fails with NoLeader at `deadline`.
    pub(crate) async fn wait_for_leader(&self, deadline: Instant) -> Result<(), RaftPathError> {
        let mut metrics = self.raft.metrics();
        loop {
            if metrics.borrow_watched().current_leader.is_some() {
                // A leader is known, but this loop came from a NotLeader without address or
                // a stale view; give Raft a moment to settle before retrying.
                let settle = Instant::now() + Duration::from_millis(50);
                if settle >= deadline {
                    return Err(RaftPathError::NoLeader);
                }
                let _ = tokio::time::timeout_at(settle, metrics.changed()).await;
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => {
                    return Err(RaftPathError::Fatal {
                        reason: "raft stopped".into(),
                    })
                }
                Err(_) => return Err(RaftPathError::NoLeader),
            }
        }
    }

    /// On the leader: confirms leadership with a quorum and returns the log id every
    /// linearizable read must observe.
    pub async fn read_index_local(&self) -> Result<LogId, RaftPathError> {
        match self.raft.get_read_linearizer(ReadPolicy::ReadIndex).await {
            Ok(l) => Ok(*l.read_log_id().log_id()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Err(not_leader(&f))
            }
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_))) => {
                Err(RaftPathError::Timeout)
            }
            Err(RaftError::Fatal(f)) => Err(RaftPathError::Fatal {
                reason: f.to_string(),
            }),
        }
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
    /// before it started.
    pub(crate) async fn fetch_read_index(&self) -> Result<LogId, RaftPathError> {
        let deadline = Instant::now() + self.config.leader_wait;
        loop {
            let local = tokio::time::timeout_at(deadline, self.read_index_local())
                .await
                .unwrap_or(Err(RaftPathError::Timeout));
            match local {
                Ok(l) => return Ok(l),
                Err(RaftPathError::NotLeader {
                    leader_id: Some(id),
                    leader: Some(Member { addr, .. }),
                }) if id != self.id => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(RaftPathError::Timeout);
                    }
                    let r: Result<Result<LogId, RaftPathError>, _> =
                        call(&self.peers, &addr, left, &(), |mut c, r| async move {
                            c.read_index(r).await
                        })
                        .await;
                    match r {
                        Ok(Ok(l)) => return Ok(l),
                        // A read index is not a write: asking again is always safe while the
                        // leadership settles.
                        Ok(Err(RaftPathError::NoLeader | RaftPathError::NotLeader { .. }))
                            if Instant::now() < deadline =>
                        {
                            self.wait_for_leader_change(id, deadline).await
                        }
                        Err(e) if e.was_not_sent() && Instant::now() < deadline => {
                            self.wait_for_leader_change(id, deadline).await
                        }
                        Ok(Err(e)) => return Err(e),
                        Err(e) => {
                            return Err(RaftPathError::LeaderUnreachable {
                                addr,
                                reason: e.to_string(),
                            })
                        }
                    }
                }
                Err(RaftPathError::NoLeader) | Err(RaftPathError::NotLeader { .. }) => {
                    self.wait_for_leader(deadline).await?
                }
                Err(e) => return Err(e),
            }
        }
    }
}
