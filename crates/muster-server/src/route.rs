//! The one routing loop. Everything that must run on the leader — writes, read-index rounds,
//! lease keep-alives and time-to-live queries, membership changes — goes through
//! [`Node::route`]: run here when this node leads, else one hop to the leader (which never
//! forwards again), else wait for a leader; all of it bounded by one deadline.
//!
//! What may be tried again is decided here, once, from how the last try failed
//! ([`Hop`]): a request that never reached the leader, or that a node refused because it does
//! not lead, did nothing, so it is retried once the leadership settles; a request whose
//! outcome is unknown (the leader went silent after taking it) is retried only when the caller
//! says doing it twice is harmless ([`Retry::Always`]).

use std::future::Future;
use std::time::Duration;

use muster_store::raft::Member;
use openraft::async_runtime::watch::WatchReceiver;
use tokio::time::Instant;

use crate::error::RaftPathError;
use crate::network::PeerError;
use crate::node::Node;

/// How a try on the leader, one hop away, failed.
#[derive(Debug, Clone)]
pub(crate) enum Hop {
    /// The request never left this node (or was refused before anything was read): trying
    /// again cannot apply it twice.
    NotSent(String),
    /// The leader answered with this error, or the outcome is unknown (`LeaderUnreachable`,
    /// `Timeout`).
    Failed(RaftPathError),
}

impl Hop {
    /// A unary peer call's outcome: its answer, or how the call itself failed.
    pub(crate) fn of_call<T>(
        addr: &str,
        r: Result<Result<T, RaftPathError>, PeerError>,
    ) -> Result<T, Hop> {
        match r {
            Ok(answer) => answer.map_err(Hop::Failed),
            Err(e) if e.was_not_sent() => Err(Hop::NotSent(e.to_string())),
            Err(e) => Err(Hop::Failed(RaftPathError::LeaderUnreachable {
                addr: addr.to_string(),
                reason: e.to_string(),
            })),
        }
    }
}

/// When a request whose outcome is unknown may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Never: it may have been applied (writes, membership changes).
    WhenNothingDone,
    /// Always: doing it twice is harmless (reads, keep-alives).
    Always,
}

/// The longest pause between tries while the leader stays the same (a leader unreachable
/// from here may come back before an election replaces it).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

impl Node {
    /// Runs a leader-only request until `deadline`: `local(deadline)` when this node leads (or
    /// knows no other leader), else `remote(leader peer address, deadline)`. See the module doc
    /// for what is retried; past `deadline` the answer is Timeout (outcome unknown) or, when
    /// nothing was sent, NoLeader or LeaderUnreachable.
    pub(crate) async fn route<T, L, LF, R, RF>(
        &self,
        deadline: Instant,
        retry: Retry,
        local: L,
        remote: R,
    ) -> Result<T, RaftPathError>
    where
        L: Fn(Instant) -> LF,
        LF: Future<Output = Result<T, RaftPathError>>,
        R: Fn(String, Instant) -> RF,
        RF: Future<Output = Result<T, Hop>>,
    {
        loop {
            // A follower that knows the leader goes there at once; trying locally first would
            // only cost a round trip through its Raft to learn the same thing.
            let here = match self.leader() {
                Some((id, leader)) if id != self.id => Err(RaftPathError::NotLeader {
                    leader_id: Some(id),
                    leader: Some(leader),
                }),
                // Past the deadline a local proposal's outcome is unknown: it may still commit.
                _ => tokio::time::timeout_at(deadline, local(deadline))
                    .await
                    .unwrap_or(Err(RaftPathError::Timeout)),
            };
            let (leader, addr) = match here {
                Err(RaftPathError::NotLeader {
                    leader_id: Some(id),
                    leader: Some(Member { addr, .. }),
                }) if id != self.id => (id, addr),
                Err(RaftPathError::NoLeader | RaftPathError::NotLeader { .. }) => {
                    self.wait_for_leader(deadline).await?;
                    continue;
                }
                other => return other,
            };
            let there = tokio::time::timeout_at(deadline, remote(addr.clone(), deadline))
                .await
                .unwrap_or(Err(Hop::Failed(RaftPathError::Timeout)));
            let failed = match there {
                Ok(r) => return Ok(r),
                Err(e) => e,
            };
            let again = match &failed {
                Hop::NotSent(_)
                | Hop::Failed(RaftPathError::NoLeader | RaftPathError::NotLeader { .. }) => true,
                Hop::Failed(RaftPathError::LeaderUnreachable { .. } | RaftPathError::Timeout) => {
                    retry == Retry::Always
                }
                Hop::Failed(_) => false,
            };
            if !again || Instant::now() >= deadline {
                return Err(match failed {
                    Hop::NotSent(reason) => RaftPathError::LeaderUnreachable { addr, reason },
                    Hop::Failed(e) => e,
                });
            }
            tracing::debug!(
                node_id = self.id,
                leader,
                "leader try failed, again: {failed:?}"
            );
            self.wait_for_leader_change(leader, deadline.min(Instant::now() + RETRY_PAUSE))
                .await;
        }
    }

    /// Waits until this node's view of the leader is no longer `old`, or `until`.
    async fn wait_for_leader_change(&self, old: u64, until: Instant) {
        let mut metrics = self.raft.metrics();
        while metrics.borrow_watched().current_leader == Some(old) {
            match tokio::time::timeout_at(until, metrics.changed()).await {
                Ok(Ok(())) => {}
                _ => return,
            }
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
}
