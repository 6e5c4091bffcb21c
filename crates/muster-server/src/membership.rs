//! Membership changes (etcd Cluster API: MemberAdd, MemberPromote, MemberRemove), executed on
//! the leader; a follower forwards them one hop, like writes.
//!
//! A new member gets a random id (as etcd does) so that an id is never reused: a wiped node
//! rejoins under a new id, never its old one (log reversion could split the cluster).
//! The new node is started with `--node-id <id> --join` and waits to be contacted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use muster_store::raft::{Member, NodeId, TypeConfig};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};

use crate::admission::request_deadline;
use crate::error::RaftPathError;
use crate::network::call;
use crate::node::Node;
use crate::route::{Hop, Retry};

/// A membership change, as forwarded to the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add a node (a learner, or straight to voter when `learner` is false).
    Add { addr: String, learner: bool },
    /// Make a learner a voter.
    Promote { id: NodeId },
    /// Remove a voter or learner.
    Remove { id: NodeId },
    /// A member announces the address clients reach it at (sent by the member itself once
    /// it runs; MemberAdd knows only the peer address).
    Publish { id: NodeId, client_addr: String },
}

/// The result of a change: the affected id, and the membership after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipChanged {
    pub id: NodeId,
    pub voters: BTreeSet<NodeId>,
    pub nodes: BTreeMap<NodeId, Member>,
}

/// A membership change may wait `leader_wait` for the previous change to settle, twice (an
/// added voter is a learner first), and then for its own commit: it is bounded by this many
/// `leader_wait`s.
const MEMBERSHIP_WAITS: u32 = 3;
/// How long a removed node keeps serving before it stops: long enough for in-flight answers
/// (among them the MemberRemove that removed it, when it was asked) to reach their clients, and
/// for the change to be committed (etcd stops a removed member about a second after applying).
const REMOVED_GRACE: Duration = Duration::from_secs(1);

type ChangeResult<T> = Result<T, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>;

fn fresh_id(taken: &BTreeSet<NodeId>) -> NodeId {
    loop {
        // Readable ids (≤ 10 digits), random so a removed id is not handed out again.
        let id = u64::from(rand::random::<u32>()).max(1000);
        if !taken.contains(&id) {
            return id;
        }
    }
}

fn summary_of(id: NodeId, membership: &openraft::Membership<NodeId, Member>) -> MembershipChanged {
    MembershipChanged {
        id,
        voters: membership.voter_ids().collect(),
        nodes: membership.nodes().map(|(id, n)| (*id, n.clone())).collect(),
    }
}

impl Node {
    /// Runs one membership step, retrying while an earlier change is still uncommitted (a new
    /// leader has not yet committed the config it inherited, or a previous change is in flight):
    /// openraft refuses such a step before appending anything, so retrying is safe. Gives up
    /// after `leader_wait` with the last error.
    async fn settled<T, F, Fut>(&self, mut step: F) -> Result<T, RaftPathError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ChangeResult<T>>,
    {
        let deadline = tokio::time::Instant::now() + self.config.leader_wait;
        let mut metrics = self.raft.metrics();
        loop {
            // openraft refuses a change while the last one is uncommitted, and logs an ERROR
            // each time (eleven at every cluster start, as members published their client
            // addresses): wait until this node has applied the current membership first.
            self.wait_membership_applied(deadline).await;
            match step().await {
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(p),
                ))) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(node_id = self.id, "membership change waits: {p}");
                    // Any metrics change may be the commit we wait for; the deadline bounds it.
                    let _ = tokio::time::timeout_at(deadline, metrics.changed()).await;
                }
                other => return other.map_err(RaftPathError::from),
            }
        }
    }

    /// Waits (up to `deadline`) until the effective membership's entry is applied here; on
    /// the leader that means it is committed.
    async fn wait_membership_applied(&self, deadline: tokio::time::Instant) {
        let mut metrics = self.raft.metrics();
        loop {
            let applied = {
                let m = metrics.borrow_watched();
                let config_at = m.membership_config.log_id().as_ref().map(|l| l.index);
                config_at <= m.last_applied.as_ref().map(|l| l.index)
            };
            if applied {
                return;
            }
            if !matches!(
                tokio::time::timeout_at(deadline, metrics.changed()).await,
                Ok(Ok(()))
            ) {
                return;
            }
        }
    }

    fn membership_summary(&self, id: NodeId) -> MembershipChanged {
        let m = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone();
        summary_of(id, m.membership())
    }

    /// The membership a change committed, from its own answer: this node's metrics may not
    /// show it yet when the call returns.
    fn committed_summary(
        &self,
        id: NodeId,
        resp: &openraft::raft::ClientWriteResponse<TypeConfig>,
    ) -> MembershipChanged {
        match &resp.membership {
            Some(m) => summary_of(id, m),
            None => self.membership_summary(id),
        }
    }

    /// Applies `change` on this node's Raft; NotLeader when it does not lead. One change at a
    /// time (see `Node::membership_changes`).
    pub async fn change_membership_local(
        &self,
        change: MembershipChange,
    ) -> Result<MembershipChanged, RaftPathError> {
        let _one_at_a_time = self.membership_changes.lock().await;
        let summary = match change {
            MembershipChange::Add { addr, learner } => {
                let current = self.membership_summary(0);
                if let Some((id, _)) = current.nodes.iter().find(|(_, m)| m.addr == addr) {
                    tracing::info!(node_id = self.id, member = id, %addr, "member add refused: address taken");
                    return Err(RaftPathError::PeerUrlExists);
                }
                let id = fresh_id(&current.nodes.keys().copied().collect());
                // Non-blocking: the new node may not be running yet (etcd's order is add, then
                // start).
                let mut resp = self
                    .settled(|| self.raft.add_learner(id, Member::new(&addr), false))
                    .await?;
                if !learner {
                    resp = self
                        .settled(|| {
                            self.raft
                                .change_membership(ChangeMembers::AddVoterIds([id].into()), true)
                        })
                        .await?;
                }
                tracing::info!(node_id = self.id, new_member = id, %addr, learner, "member added");
                self.committed_summary(id, &resp)
            }
            MembershipChange::Promote { id } => {
                let current = self.membership_summary(id);
                if !current.nodes.contains_key(&id) {
                    return Err(RaftPathError::MemberNotFound);
                }
                if current.voters.contains(&id) {
                    return Err(RaftPathError::NotLearner);
                }
                let resp = self
                    .settled(|| {
                        self.raft
                            .change_membership(ChangeMembers::AddVoterIds([id].into()), true)
                    })
                    .await?;
                tracing::info!(node_id = self.id, member = id, "member promoted");
                self.committed_summary(id, &resp)
            }
            MembershipChange::Remove { id } => {
                let current = self.membership_summary(id);
                if !current.nodes.contains_key(&id) {
                    return Err(RaftPathError::MemberNotFound);
                }
                let resp = if current.voters.contains(&id) {
                    if current.voters.len() == 1 {
                        return Err(RaftPathError::Rejected {
                            reason: "cannot remove the last voter".into(),
                        });
                    }
                    self.settled(|| {
                        self.raft
                            .change_membership(ChangeMembers::RemoveVoters([id].into()), false)
                    })
                    .await?
                } else {
                    self.settled(|| {
                        self.raft
                            .change_membership(ChangeMembers::RemoveNodes([id].into()), false)
                    })
                    .await?
                };
                tracing::info!(node_id = self.id, member = id, "member removed");
                if let Some(Member { addr, .. }) = current.nodes.get(&id) {
                    // Best effort: a node that is down learns it when it next contacts us.
                    let r: Result<(), _> = call(
                        &self.peers,
                        addr,
                        Duration::from_secs(2),
                        &id,
                        |mut c, r| async move { c.notify_removed(r).await },
                    )
                    .await;
                    if let Err(e) = r {
                        tracing::warn!(
                            node_id = self.id,
                            member = id,
                            "could not tell the removed node: {e}"
                        );
                    }
                }
                self.committed_summary(id, &resp)
            }
            MembershipChange::Publish { id, client_addr } => {
                let current = self.membership_summary(id);
                let Some(member) = current.nodes.get(&id) else {
                    return Err(RaftPathError::MemberNotFound);
                };
                if member.client_addr == client_addr {
                    return Ok(current);
                }
                // Only the client address changes: the peer address, which Raft routes by,
                // stays the member's own (openraft warns that replacing it could split the
                // cluster).
                let updated = Member {
                    addr: member.addr.clone(),
                    client_addr: client_addr.clone(),
                };
                let resp = self
                    .settled(|| {
                        self.raft.change_membership(
                            ChangeMembers::SetNodes([(id, updated.clone())].into()),
                            true,
                        )
                    })
                    .await?;
                tracing::info!(node_id = self.id, member = id, %client_addr, "member published its client address");
                self.committed_summary(id, &resp)
            }
        };
        Ok(summary)
    }

    /// Applies `change` through the leader (forwarded one hop when this node follows). Not
    /// retried once the leader may have acted on it.
    pub async fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<MembershipChanged, RaftPathError> {
        self.route(
            request_deadline(MEMBERSHIP_WAITS * self.config.leader_wait),
            Retry::WhenNothingDone,
            |_| self.change_membership_local(change.clone()),
            |addr, deadline| {
                let change = &change;
                async move {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let r = call(&self.peers, &addr, left, change, |mut c, r| async move {
                        c.change_membership(r).await
                    })
                    .await;
                    Hop::of_call(&addr, r)
                }
            },
        )
        .await
    }

    /// Records this node's client address in the membership (through the leader) once this
    /// node is a member and a leader is known; returns when the membership shows it. Retried
    /// while the cluster settles: publishing is idempotent.
    pub async fn publish_client_addr(&self) {
        const RETRY: Duration = Duration::from_millis(200);
        let mut metrics = self.raft.metrics();
        loop {
            let (recorded, leader) = {
                let m = metrics.borrow_watched();
                let listed = m.membership_config.membership().get_node(&self.id);
                (listed.map(|n| n.client_addr.clone()), m.current_leader)
            };
            match recorded {
                Some(addr) if addr == self.advertise => return,
                Some(_) if leader.is_some() => {
                    let change = MembershipChange::Publish {
                        id: self.id,
                        client_addr: self.advertise.clone(),
                    };
                    if let Err(e) = self.change_membership(change).await {
                        tracing::debug!(node_id = self.id, "publishing the client address: {e}");
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                }
                _ => {}
            }
            // The next membership or leader change; a success shows up here once applied.
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// Resolves once this node has been removed from the cluster (a removed node stops
    /// serving, as an etcd member does).
    pub async fn wait_removed(&self) {
        let mut metrics = self.raft.metrics();
        loop {
            while !self.is_removed() {
                tokio::select! {
                    changed = metrics.changed() => {
                        if changed.is_err() {
                            // Raft stopped: nothing more will change.
                            std::future::pending::<()>().await;
                        }
                    }
                    _ = self.removed.notified() => {}
                }
            }
            tracing::warn!(
                node_id = self.id,
                grace_ms = REMOVED_GRACE.as_millis() as u64,
                "this node was removed from the cluster; stopping after the grace period"
            );
            tokio::time::sleep(REMOVED_GRACE).await;
            // The membership without this node may have been uncommitted and then replaced.
            if self.is_removed() {
                return;
            }
            tracing::info!(node_id = self.id, "removal was not committed; serving on");
        }
    }

    /// Records that the leader removed this node.
    pub fn mark_removed(&self) {
        self.removed_flag
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // notify_one keeps a permit if the server task is not waiting yet.
        self.removed.notify_one();
    }

    /// Whether this node was removed: the leader said so, or this node has seen itself in the
    /// membership and a later membership no longer lists it. (A joining node replays older
    /// memberships that do not list it yet; those do not count.)
    pub fn is_removed(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        if self.removed_flag.load(SeqCst) {
            return true;
        }
        let m = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone();
        let listed = m.membership().nodes().any(|(id, _)| *id == self.id);
        if listed {
            self.was_member.store(true, SeqCst);
        }
        self.was_member.load(SeqCst) && !listed
    }
}
