//! The write path and the linearizable-read barrier.
//!
//! A write goes to the local Raft if this node leads; otherwise it is forwarded, one hop, to
//! the leader (`RaftTransport.Forward`). The leader never forwards again: if leadership moved,
//! the caller gets Unavailable with a leader hint. While no leader is known (an election), the
//! request waits up to `leader_wait` for one.
//!
//! A linearizable read asks the leader for a read index (read-index protocol: the leader
//! confirms its leadership with a quorum), then waits until the local state machine has applied
//! that far and serves locally.

use openraft::async_runtime::watch::WatchReceiver;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use muster_store::raft::{LogId, TypeConfig};
use muster_types::{Command, CommandResponse, LogEntry};
use openraft::error::{ClientWriteError, ForwardToLeader, LinearizableReadError, RaftError};
use openraft::ReadPolicy;
use tokio::time::Instant;

use crate::error::RaftPathError;
use crate::network::call;
use crate::node::Node;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn not_leader(f: &ForwardToLeader<TypeConfig>) -> RaftPathError {
    if f.leader_id.is_none() {
        return RaftPathError::NoLeader;
    }
    RaftPathError::NotLeader {
        leader_id: f.leader_id,
        leader_addr: f.leader_node.as_ref().map(|n| n.addr.clone()),
    }
}

/// How a forwarded write failed.
enum Forwarded {
    /// No connection to the leader could be made: the request was not delivered.
    NotSent(crate::network::PeerError),
    /// The leader answered with an error, or the outcome is unknown.
    Failed(RaftPathError),
}

/// How long one forwarded request may take before the follower gives up on it.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

impl Node {
    /// Proposes `cmd` on this node's Raft; fails with NotLeader when it does not lead.
    pub async fn write_local(&self, cmd: Command) -> Result<CommandResponse, RaftPathError> {
        let entry = LogEntry {
            time_ms: now_ms(),
            cmd,
        };
        match self.raft.client_write(entry).await {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(not_leader(&f)),
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
                Err(RaftPathError::CommitUnknown)
            }
            Err(RaftError::APIError(e)) => Err(RaftPathError::Internal {
                reason: e.to_string(),
            }),
            Err(RaftError::Fatal(f)) => Err(RaftPathError::Fatal {
                reason: f.to_string(),
            }),
        }
    }

    /// Applies `cmd` through the cluster: locally if leader, else forwarded one hop.
    pub async fn write(&self, cmd: Command) -> Result<CommandResponse, RaftPathError> {
        let deadline = Instant::now() + self.config.leader_wait;
        loop {
            match self.write_local(cmd.clone()).await {
                Err(RaftPathError::NotLeader {
                    leader_id: Some(id),
                    leader_addr: Some(addr),
                }) if id != self.id => match self.forward(&addr, &cmd).await {
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
                        return Err(RaftPathError::LeaderUnreachable {
                            addr,
                            reason: e.to_string(),
                        })
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

    async fn forward(&self, addr: &str, cmd: &Command) -> Result<CommandResponse, Forwarded> {
        tracing::debug!(
            node_id = self.id,
            leader = addr,
            cmd = cmd.name(),
            "forwarding write"
        );
        let r: Result<Result<CommandResponse, RaftPathError>, _> = call(
            &self.peers,
            addr,
            FORWARD_TIMEOUT,
            cmd,
            |mut c, r| async move { c.forward(r).await },
        )
        .await;
        match r {
            Ok(inner) => inner.map_err(Forwarded::Failed),
            Err(e) if e.was_not_sent() => Err(Forwarded::NotSent(e)),
            // The request may have reached the leader before the connection broke.
            Err(e) => Err(Forwarded::Failed(RaftPathError::LeaderUnreachable {
                addr: addr.to_string(),
                reason: e.to_string(),
            })),
        }
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

    /// Blocks until this node's state machine reflects every write acknowledged before the call.
    pub async fn linearizable_barrier(&self) -> Result<(), RaftPathError> {
        let deadline = Instant::now() + self.config.leader_wait;
        let read_log_id = loop {
            match self.read_index_local().await {
                Ok(l) => break l,
                Err(RaftPathError::NotLeader {
                    leader_id: Some(id),
                    leader_addr: Some(addr),
                }) if id != self.id => {
                    let r: Result<Result<LogId, RaftPathError>, _> = call(
                        &self.peers,
                        &addr,
                        FORWARD_TIMEOUT,
                        &(),
                        |mut c, r| async move { c.read_index(r).await },
                    )
                    .await;
                    match r {
                        Ok(Ok(l)) => break l,
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
        };
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
}
