//! The lease operations, as the gRPC Lease service (and the registry) call them: grant, revoke,
//! keep-alive, time-to-live and list. Grant and revoke go through the node's write path (with a
//! request id when the client sent one); keep-alive and time-to-live are answered from the
//! leader's deadlines, here or one hop away on the leader.

use muster_types::{Command, CommandResponse, InstanceLease, ResponseBody};
use openraft::LinearizerOption;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::deadlines::Renewal;
use super::{id_from_request_id, LeaseKeeper};
use crate::admission::request_deadline;
use crate::error::{RaftPathError, ServerError};
use crate::network::call;
use crate::route::{Hop, Retry};

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    /// The store revision after the grant (a grant does not advance it).
    pub revision: i64,
    pub id: i64,
    /// The TTL granted, after raising it to the minimum.
    pub ttl_secs: i64,
}

/// A lease's remaining life, as the leader sees it. Travels leader → follower as bincode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeToLive {
    pub id: i64,
    /// Whole seconds left (truncated, as etcd does); -1 when unknown or expired.
    pub ttl_secs: i64,
    /// The TTL granted; 0 when unknown.
    pub granted_ttl_secs: i64,
    /// Attached keys, when asked for.
    pub keys: Vec<Vec<u8>>,
    /// The leader's store revision when it answered.
    pub revision: i64,
}

impl LeaseKeeper {
    /// The shortest TTL granted, in seconds (shorter requests are raised to it).
    pub fn min_ttl_secs(&self) -> i64 {
        self.node.config.min_lease_ttl_secs()
    }

    /// The (id, TTL) a new lease is proposed with, for LeaseGrant and for a Register that
    /// grants its instance's lease. `id` 0 = the server picks one: derived from `request_id`
    /// when given, so a retry proposes the same command; else from this node's generator. TTL
    /// above the maximum is OutOfRange; below the minimum it is raised.
    pub fn new_lease(
        &self,
        id: i64,
        ttl_secs: i64,
        request_id: Option<&str>,
    ) -> Result<(i64, i64), ServerError> {
        let max_secs = self.node.config.lease.max_ttl_secs;
        if ttl_secs > max_secs {
            return Err(ServerError::LeaseTtlTooLarge { ttl_secs, max_secs });
        }
        let ttl_secs = ttl_secs.max(self.min_ttl_secs());
        let id = match (id, request_id) {
            (0, Some(r)) => id_from_request_id(r),
            (0, None) => self.ids.next(),
            (id, _) => id,
        };
        Ok((id, ttl_secs))
    }

    /// LeaseGrant, with the id and TTL of [`Self::new_lease`].
    pub async fn grant(
        &self,
        id: i64,
        ttl_secs: i64,
        request_id: Option<String>,
    ) -> Result<Granted, ServerError> {
        let (id, ttl_secs) = self.new_lease(id, ttl_secs, request_id.as_deref())?;
        let cmd = Command::LeaseGrant { id, ttl_secs }.idempotent(request_id);
        let resp = self.node.write(cmd.clone()).await?;
        self.observe(&cmd, &resp);
        let revision = resp.revision;
        match resp.result? {
            ResponseBody::LeaseGrant { id, ttl_secs } => Ok(Granted {
                revision,
                id,
                ttl_secs,
            }),
            _ => Err(ServerError::UnexpectedResponse {
                expected: "lease_grant",
            }),
        }
    }

    /// LeaseRevoke: deletes the lease and its keys in one revision; returns that revision.
    pub async fn revoke(&self, id: i64, request_id: Option<String>) -> Result<i64, ServerError> {
        let cmd = Command::LeaseRevoke { id }.idempotent(request_id);
        let resp = self.node.write(cmd.clone()).await?;
        self.observe(&cmd, &resp);
        let revision = resp.revision;
        match resp.result? {
            ResponseBody::LeaseRevoke => Ok(revision),
            _ => Err(ServerError::UnexpectedResponse {
                expected: "lease_revoke",
            }),
        }
    }

    /// Whether [`Self::observe`] has anything to learn from `cmd`'s answer, so callers keep a
    /// copy of only those commands.
    pub fn observes(cmd: &Command) -> bool {
        match cmd {
            Command::Batch(cmds) => cmds.iter().any(Self::observes),
            Command::Idempotent { cmd, .. } => Self::observes(cmd),
            Command::LeaseGrant { .. } | Command::LeaseRevoke { .. } => true,
            Command::Register(r) => matches!(r.lease, InstanceLease::Grant { .. }),
            _ => false,
        }
    }

    /// Tells the keeper about a lease write this node applied as leader (its own, or one a
    /// follower forwarded): a grant, a revoke, or a Register that granted its instance's lease.
    /// A new lease's deadline then starts now rather than at the next reconcile. Ignored unless
    /// this node's keeper is active.
    pub fn observe(&self, cmd: &Command, resp: &CommandResponse) {
        let cmd = match (cmd, &resp.result) {
            // A follower's batched forward: each command has its own response.
            (Command::Batch(cmds), Ok(ResponseBody::Batch(resps))) => {
                for (c, r) in cmds.iter().zip(resps) {
                    self.observe(c, r);
                }
                return;
            }
            (Command::Idempotent { cmd, .. }, _) => cmd.as_ref(),
            (other, _) => other,
        };
        let mut st = self.state();
        let Some(l) = st.as_mut() else { return };
        match (cmd, &resp.result) {
            (Command::LeaseGrant { .. }, Ok(ResponseBody::LeaseGrant { id, ttl_secs }))
                if !l.deadlines.contains(*id) =>
            {
                l.deadlines.track(*id, *ttl_secs, Instant::now());
            }
            // A registration that granted its instance's lease: the same as a LeaseGrant.
            (Command::Register(r), Ok(ResponseBody::Register { .. })) => {
                if let InstanceLease::Grant { id, ttl_secs } = r.lease {
                    if !l.deadlines.contains(id) {
                        l.deadlines.track(id, ttl_secs, Instant::now());
                    }
                }
            }
            // A replayed revoke may name an id granted again since: the store decides.
            (Command::LeaseRevoke { id }, Ok(ResponseBody::LeaseRevoke))
                if self.node.sm.read().mvcc.lease_ttl(*id).is_none() =>
            {
                l.deadlines.forget(*id);
            }
            _ => {}
        }
    }

    /// Keep-alives for `ids`, renewed on the leader: (id, TTL) each, TTL 0 when the lease does
    /// not exist or has expired. Idempotent, so retried through an election: a keep-alive
    /// stream rides through it instead of failing.
    pub async fn keep_alive(&self, ids: &[i64]) -> Result<Vec<(i64, i64)>, ServerError> {
        let r = self
            .node
            .route(
                request_deadline(self.node.config.leader_wait),
                Retry::Always,
                |deadline| self.keep_alive_local(ids, deadline),
                |addr, deadline| async move {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let r = call(&self.node.peers, &addr, left, &ids, |mut c, r| async move {
                        c.lease_keep_alive(r).await
                    })
                    .await;
                    Hop::of_call(&addr, r)
                },
            )
            .await?;
        Ok(r)
    }

    /// A forwarded keep-alive batch, on the leader: never forwarded again.
    pub async fn keep_alive_on_leader(
        &self,
        ids: &[i64],
    ) -> Result<Vec<(i64, i64)>, RaftPathError> {
        let deadline = Instant::now() + self.node.config.leader_wait;
        self.keep_alive_local(ids, deadline).await
    }

    /// LeaseTimeToLive, answered by the leader.
    pub async fn time_to_live(&self, id: i64, keys: bool) -> Result<TimeToLive, ServerError> {
        let r = self
            .node
            .route(
                request_deadline(self.node.config.leader_wait),
                Retry::Always,
                |deadline| self.time_to_live_local(id, keys, deadline),
                |addr, deadline| async move {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let r = call(
                        &self.node.peers,
                        &addr,
                        left,
                        &(id, keys),
                        |mut c, r| async move { c.lease_time_to_live(r).await },
                    )
                    .await;
                    Hop::of_call(&addr, r)
                },
            )
            .await?;
        Ok(r)
    }

    /// A forwarded time-to-live query, on the leader: never forwarded again.
    pub async fn time_to_live_on_leader(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<TimeToLive, RaftPathError> {
        let deadline = Instant::now() + self.node.config.leader_wait;
        self.time_to_live_local(id, keys, deadline).await
    }

    /// LeaseLeases: every lease id, read linearizably from the local store; with the revision.
    pub async fn leases(&self) -> Result<(i64, Vec<i64>), ServerError> {
        self.node.linearizable_barrier().await?;
        let sm = self.node.sm.read();
        let ids = sm.mvcc.lease_ttls().into_iter().map(|(id, _)| id).collect();
        Ok((sm.mvcc.current_revision(), ids))
    }

    /// The term this node's keeper leads in; waits (up to `deadline`) when Raft already made
    /// this node leader and the keeper is still taking over.
    async fn await_leading(&self, deadline: Instant) -> Result<u64, RaftPathError> {
        let mut active = self.active.subscribe();
        loop {
            let term = *active.borrow_and_update();
            if term.is_some() && term == self.leader_term_now() {
                return term.ok_or(RaftPathError::NoLeader);
            }
            if self.node.current_leader() != Some(self.node.id) {
                return Err(self.not_leader());
            }
            match tokio::time::timeout_at(deadline, active.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => {
                    return Err(RaftPathError::Fatal {
                        reason: "lease keeper stopped".into(),
                    })
                }
                Err(_) => return Err(RaftPathError::Timeout),
            }
        }
    }

    /// Confirms this node still leads in `term`: a quorum acknowledged it within the leader
    /// lease (heartbeating at once if that is stale). A leader cut off from the majority fails
    /// here and stops renewing leases.
    async fn confirm_leadership(&self, term: u64) -> Result<(), RaftPathError> {
        // Only the quorum's acknowledgement matters here, not a read position.
        let _confirmed = self
            .node
            .raft
            .get_read_linearizer(LinearizerOption::new(None, true))
            .await?;
        if self.leader_term_now() != Some(term) {
            return Err(self.not_leader());
        }
        Ok(())
    }

    async fn keep_alive_local(
        &self,
        ids: &[i64],
        deadline: Instant,
    ) -> Result<Vec<(i64, i64)>, RaftPathError> {
        let term = self.await_leading(deadline).await?;
        self.confirm_leadership(term).await?;
        self.renew(term, ids)
    }

    /// Renews `ids` in `term`'s deadlines.
    fn renew(&self, term: u64, ids: &[i64]) -> Result<Vec<(i64, i64)>, RaftPathError> {
        let now = Instant::now();
        let mut st = self.state();
        let Some(l) = st.as_mut().filter(|l| l.term == term) else {
            return Err(self.not_leader());
        };
        let mut sm = None;
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            let ttl = match l.deadlines.renew(id, now) {
                Renewal::Renewed { ttl_secs } => ttl_secs,
                Renewal::Expired => 0,
                Renewal::Unknown => {
                    // Granted so recently (or by a writer that skipped `observe`) that the
                    // reconcile has not seen it yet: the store decides. Lock order: state, sm.
                    let sm = sm.get_or_insert_with(|| self.node.sm.read());
                    match sm.mvcc.lease_ttl(id) {
                        Some(ttl_secs) => {
                            l.deadlines.track(id, ttl_secs, now);
                            ttl_secs
                        }
                        None => 0,
                    }
                }
            };
            out.push((id, ttl));
        }
        Ok(out)
    }

    async fn time_to_live_local(
        &self,
        id: i64,
        keys: bool,
        deadline: Instant,
    ) -> Result<TimeToLive, RaftPathError> {
        let term = self.await_leading(deadline).await?;
        self.confirm_leadership(term).await?;
        self.remaining(term, id, keys)
    }

    fn remaining(&self, term: u64, id: i64, with_keys: bool) -> Result<TimeToLive, RaftPathError> {
        // The store first, without the keeper's lock: it may wait behind a long apply.
        let (granted, keys, revision) = {
            let sm = self.node.sm.read();
            let keys = if with_keys {
                sm.mvcc.lease(id).map(|info| info.keys).unwrap_or_default()
            } else {
                Vec::new()
            };
            (sm.mvcc.lease_ttl(id), keys, sm.mvcc.current_revision())
        };
        let unknown = TimeToLive {
            id,
            ttl_secs: -1,
            granted_ttl_secs: 0,
            keys: Vec::new(),
            revision,
        };
        let Some(granted) = granted else {
            return Ok(unknown);
        };
        let now = Instant::now();
        let mut st = self.state();
        let Some(l) = st.as_mut().filter(|l| l.term == term) else {
            return Err(self.not_leader());
        };
        let left = match l.deadlines.remaining(id, now) {
            Some((_, Some(left))) => left.as_secs() as i64,
            // Past its deadline: its LeaseExpire is on the way.
            Some((_, None)) => return Ok(unknown),
            None => {
                l.deadlines.track(id, granted, now);
                granted
            }
        };
        Ok(TimeToLive {
            id,
            ttl_secs: left,
            granted_ttl_secs: granted,
            keys,
            revision,
        })
    }
}
