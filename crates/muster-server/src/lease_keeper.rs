//! The lease keeper: everything about lease *time*, which lives only in the leader's memory.
//! Leases themselves (id, TTL, attached keys) are replicated state in the store; their
//! deadlines are not.
//!
//! # What it owns
//! - **Deadlines** ([`deadlines`]): leader-only, in memory, never replicated. Keep-alives renew
//!   them here and are never written to the log (etcd's model). A follower forwards keep-alives
//!   and TimeToLive one hop to the leader (`RaftTransport.LeaseKeepAlive` / `LeaseTimeToLive`,
//!   served by `grpc/raft_service.rs`).
//! - **Leadership changes**: a task watches Raft. When this node becomes leader in term T it
//!   first confirms leadership with a quorum and applies up to the read index (which covers the
//!   term's blank entry, so every lease granted under earlier leaders is in its store), then
//!   starts *every* lease's deadline at now + TTL: an election never expires a live lease. When
//!   it stops leading, or the term changes, the deadlines are dropped at once and reaping stops.
//! - **The reaper**: every `lease.reap_interval` the leader takes every lease past its deadline
//!   and proposes one `Command::LeaseExpire` per `lease.expire_batch_max` leases. The applier
//!   deletes all their keys in one revision on every node; nothing on a follower and nothing in
//!   apply reads a clock. Lateness (applied on the leader − deadline) is kept in
//!   [`LeaseKeeper::expiry_stats`] and logged per batch, so expiry precision can be measured.
//! - **Lease operations** ([`ops`]) for the gRPC Lease service and anything else that grants
//!   (e.g. the registry): grant (TTL bounds, id choice), revoke, keep-alive, time-to-live, list.
//!
//! # Why a deposed leader never wrongly revokes
//! - Expiry is proposed only through the local Raft (`Node::write_local_exempt`, never
//!   forwarded, and never refused by the proposal queue's back-pressure bound): a
//!   node that no longer leads gets ForwardToLeader, and an entry proposed in a term that has
//!   been superseded cannot commit (the new majority rejects the old term; Raft discards it).
//! - The keeper acts only while Raft metrics say "leader" in the very term it took over in;
//!   each look at deadlines re-checks that, and results of proposals from an older term are
//!   ignored. If Raft refuses an expiry proposal as not-leader (openraft also refuses writes
//!   from a leader whose lease lapsed without a quorum, while it still reports itself leader),
//!   the keeper drops its deadlines at once; only a new takeover restarts them (`t33`).
//! - Keep-alives are accepted only after the leader confirms its leadership (a quorum ack within
//!   the leader lease), so a leader cut off from the majority stops renewing: its clients fail
//!   over to the real leader, which restarted every deadline at takeover.
//! - Stall guard: a look that comes much later than scheduled (the process was paused) first
//!   pushes every deadline back by the lost time, instead of expiring every lease whose
//!   keep-alives sat unread in this node's own queues (the failure etcd had).
//!
//! # Retries without applying twice (request ids)
//! A client may send gRPC metadata `x-muster-request-id` (1–128 bytes, unique per logical
//! request — a UUID — and the same on every retry of it) with LeaseGrant and LeaseRevoke. The
//! proposal is then `Command::Idempotent { request_id, cmd }`: the applier stores the response
//! under the id in the same atomic batch as the effect, keeps it in snapshots, and answers every
//! repeat with that first response without applying again (muster-store `mvcc/dedup.rs`). So a
//! grant retried after "commit status unknown" (the leader died after replicating) returns the
//! same lease — not a second one, nor "lease already exists" — and a retried revoke succeeds
//! instead of "lease not found". The id is remembered for 5 minutes of leader time.
//!
//! A LeaseGrant with ID 0 needs an id chosen *before* proposing. With a request id it is derived
//! from it (FNV-1a, positive), so every retry proposes the identical command — the applier
//! refuses a repeat that differs (`RequestIdReused`). Without a request id a fresh id comes from
//! a per-node generator (node id in the top bits, as etcd does); a client retry then grants a
//! second lease, which nobody keeps alive and which expires after its TTL. A Register that
//! grants its instance's lease picks the id the same way ([`LeaseKeeper::new_lease`]) and is
//! observed like a grant. Keep-alive,
//! TimeToLive and LeaseLeases are idempotent; LeaseExpire skips ids already gone.
//!
//! Lock order: the keeper's state, then the state machine's read lock; never the reverse.

mod deadlines;
mod ops;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use muster_types::Command;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::ServerState;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::error::RaftPathError;
use crate::node::Node;
use deadlines::Deadlines;

pub use ops::{Granted, TimeToLive};

/// At most this often the tracked set is compared with the store's leases (a safety net for
/// leases granted without passing through [`LeaseKeeper::observe`]).
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// Lateness samples kept for [`LeaseKeeper::expiry_stats`].
const MAX_LATENESS_SAMPLES: usize = 200_000;

/// The leader's view while it leads in `term`.
struct Leading {
    term: u64,
    deadlines: Deadlines,
    /// When the reaper last looked (for the stall guard).
    last_look: Instant,
    /// `Mvcc::lease_generation` at the last reconcile.
    synced_generation: u64,
    last_reconcile: Instant,
}

/// How late leases expired on this node while it led (applied on the leader − deadline).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpiryStats {
    /// Leases expired by this node's reaper.
    pub expired: u64,
    /// LeaseExpire entries it proposed and saw applied.
    pub entries: u64,
    /// Lateness percentiles over the most recent expiries, in milliseconds.
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

#[derive(Default)]
struct Lateness {
    expired: u64,
    entries: u64,
    samples_ms: Vec<u64>,
}

/// Leader-side lease time for one node. Create with [`LeaseKeeper::start`].
pub struct LeaseKeeper {
    node: Arc<Node>,
    state: Mutex<Option<Leading>>,
    /// The term the keeper is active in (None while not leading); lets requests that reach a
    /// just-elected leader wait for the takeover instead of failing.
    active: watch::Sender<Option<u64>>,
    ids: IdGen,
    lateness: Mutex<Lateness>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl LeaseKeeper {
    /// Starts the keeper's leadership watch and reaper for `node`.
    pub fn start(node: Arc<Node>) -> Arc<LeaseKeeper> {
        let keeper = Arc::new(LeaseKeeper {
            ids: IdGen::new(node.id),
            node,
            state: Mutex::new(None),
            active: watch::channel(None).0,
            lateness: Mutex::new(Lateness::default()),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(keeper.clone().run());
        *lock(&keeper.task) = Some(task);
        keeper
    }

    /// Stops the task and forgets every deadline (the node is shutting down).
    pub fn stop(&self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
        self.step_down("stopped");
    }

    /// Lease expiry lateness measured on this node while it led.
    pub fn expiry_stats(&self) -> ExpiryStats {
        let l = lock(&self.lateness);
        let mut s = l.samples_ms.clone();
        s.sort_unstable();
        let pct = |p: usize| {
            s.get((s.len() * p / 100).min(s.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        ExpiryStats {
            expired: l.expired,
            entries: l.entries,
            p50_ms: pct(50),
            p99_ms: pct(99),
            max_ms: s.last().copied().unwrap_or(0),
        }
    }

    /// Number of leases whose deadlines this node tracks (0 unless it leads).
    pub fn tracked(&self) -> usize {
        lock(&self.state).as_ref().map_or(0, |l| l.deadlines.len())
    }

    fn state(&self) -> MutexGuard<'_, Option<Leading>> {
        lock(&self.state)
    }

    /// The term in which Raft says this node leads right now.
    fn leader_term_now(&self) -> Option<u64> {
        let m = self.node.raft.metrics().borrow_watched().clone();
        (m.state == ServerState::Leader && m.current_leader == Some(self.node.id))
            .then_some(m.current_term)
    }

    fn active_term(&self) -> Option<u64> {
        self.state().as_ref().map(|l| l.term)
    }

    /// The error telling a caller where the leader is.
    fn not_leader(&self) -> RaftPathError {
        match self.node.leader() {
            Some((id, leader)) => RaftPathError::NotLeader {
                leader_id: Some(id),
                leader: Some(leader),
            },
            None => RaftPathError::NoLeader,
        }
    }

    async fn run(self: Arc<Self>) {
        let mut metrics = self.node.raft.metrics();
        let mut ticker = tokio::time::interval(self.node.config.lease.reap_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let leading = self.leader_term_now();
            if let Some(active) = self.active_term() {
                if leading != Some(active) {
                    self.step_down("leadership lost or term changed");
                }
            }
            if let (Some(term), None) = (leading, self.active_term()) {
                self.take_over(term).await;
            }
            tokio::select! {
                changed = metrics.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = ticker.tick() => self.clone().look(),
            }
        }
        self.step_down("raft stopped");
    }

    /// Becomes the lease authority for `term`: confirm, catch up, restart every deadline.
    async fn take_over(&self, term: u64) {
        // The read index is at least this term's blank entry: once applied, the store holds
        // every lease any earlier leader granted.
        let read_log_id = match self.node.read_index_local().await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(node_id = self.node.id, term, "lease takeover deferred: {e}");
                return;
            }
        };
        if !self
            .node
            .wait_applied(Some(read_log_id.index), self.node.config.leader_wait)
            .await
        {
            return;
        }
        let now = Instant::now();
        let mut st = self.state();
        if self.leader_term_now() != Some(term) {
            return;
        }
        let (leases, generation) = {
            let sm = self.node.sm.read();
            (sm.mvcc.lease_ttls(), sm.mvcc.lease_generation())
        };
        *st = Some(Leading {
            term,
            deadlines: Deadlines::restart_all(&leases, now),
            last_look: now,
            synced_generation: generation,
            last_reconcile: now,
        });
        drop(st);
        self.active.send_replace(Some(term));
        tracing::info!(
            node_id = self.node.id,
            term,
            leases = leases.len(),
            "lease keeper leading: every deadline restarts at now + TTL"
        );
    }

    fn step_down(&self, why: &'static str) {
        let old = self.state().take();
        self.active.send_replace(None);
        if let Some(old) = old {
            tracing::info!(
                node_id = self.node.id,
                term = old.term,
                leases = old.deadlines.len(),
                why,
                "lease keeper stepped down; deadlines dropped"
            );
        }
    }

    /// One look at the deadlines: stall guard, take what expired, propose it; now and then a
    /// reconcile with the store (on a blocking thread: it may wait behind a long apply).
    fn look(self: Arc<Self>) {
        let now = Instant::now();
        let cfg = &self.node.config;
        let mut reconcile = false;
        let (term, batches): (u64, Vec<Vec<(i64, Instant)>>) = {
            let mut st = self.state();
            let Some(l) = st.as_mut() else { return };
            if self.leader_term_now() != Some(l.term) {
                return; // the loop steps down on the metrics change it is about to see
            }
            // A client renewing at TTL/3 with the minimum TTL (1.5 × election_max) has at
            // least one election_max of slack, so only a longer gap can expire it wrongly.
            let gap = now.saturating_duration_since(l.last_look);
            if gap > cfg.raft.election_max {
                let lost = gap.saturating_sub(cfg.lease.reap_interval);
                l.deadlines.postpone_all(lost);
                tracing::warn!(
                    node_id = self.node.id,
                    term = l.term,
                    stalled_ms = lost.as_millis() as u64,
                    "lease reaper ran late; deadlines postponed by the stall"
                );
            }
            l.last_look = now;
            if now.saturating_duration_since(l.last_reconcile) >= RECONCILE_EVERY {
                l.last_reconcile = now;
                reconcile = true;
            }
            let taken = l.deadlines.take_expired(now, usize::MAX);
            let batches = taken
                .chunks(cfg.lease.expire_batch_max)
                .map(<[_]>::to_vec)
                .collect();
            (l.term, batches)
        };
        for batch in batches {
            tokio::spawn(self.clone().expire(term, batch));
        }
        if reconcile {
            let keeper = self.clone();
            tokio::task::spawn_blocking(move || keeper.reconcile(term));
        }
    }

    /// Brings `term`'s deadlines in line with the store's leases, if the store's lease set
    /// changed (or the counts disagree: that also catches a lease dropped here by mistake,
    /// e.g. by a replayed revoke of an id granted again since). The store is read without the
    /// keeper's lock held, and the result is used only if the set did not change meanwhile.
    fn reconcile(&self, term: u64) {
        let (generation, count) = {
            let sm = self.node.sm.read();
            (sm.mvcc.lease_generation(), sm.mvcc.lease_count())
        };
        match self.state().as_ref() {
            Some(l) if l.term == term => {
                if l.synced_generation == generation && l.deadlines.len() == count {
                    return;
                }
            }
            _ => return,
        }
        let (leases, generation) = {
            let sm = self.node.sm.read();
            (sm.mvcc.lease_ttls(), sm.mvcc.lease_generation())
        };
        let mut st = self.state();
        let Some(l) = st.as_mut().filter(|l| l.term == term) else {
            return;
        };
        // Lock order: state, then sm. Unchanged generation = the snapshot is still the store.
        if self.node.sm.read().mvcc.lease_generation() != generation {
            return; // changed meanwhile: the next reconcile will see it
        }
        l.synced_generation = generation;
        let (added, dropped) = l.deadlines.reconcile(&leases, Instant::now());
        if added + dropped > 0 {
            tracing::debug!(
                node_id = self.node.id,
                term,
                added,
                dropped,
                "leases reconciled"
            );
        }
    }

    /// Proposes one LeaseExpire for `batch` (id, deadline) and settles the outcome.
    async fn expire(self: Arc<Self>, term: u64, batch: Vec<(i64, Instant)>) {
        let ids: Vec<i64> = batch.iter().map(|(id, _)| *id).collect();
        let result = self
            .node
            .write_local_exempt(Command::LeaseExpire { ids: ids.clone() })
            .await;
        let applied_at = Instant::now();
        let mut st = self.state();
        // A newer term's keeper restarted every deadline; nothing here is ours to settle.
        let Some(l) = st.as_mut().filter(|l| l.term == term) else {
            return;
        };
        match result {
            Ok(resp) => {
                for id in &ids {
                    l.deadlines.forget(*id);
                }
                drop(st);
                let late: Vec<u64> = batch
                    .iter()
                    .map(|(_, d)| applied_at.saturating_duration_since(*d).as_millis() as u64)
                    .collect();
                let max_late_ms = late.iter().copied().max().unwrap_or(0);
                tracing::info!(
                    node_id = self.node.id,
                    term,
                    revision = resp.revision,
                    leases = ids.len(),
                    max_late_ms,
                    "leases expired"
                );
                let mut lat = lock(&self.lateness);
                lat.expired += ids.len() as u64;
                lat.entries += 1;
                lat.samples_ms.extend(late);
                let excess = lat.samples_ms.len().saturating_sub(MAX_LATENESS_SAMPLES);
                lat.samples_ms.drain(..excess);
            }
            Err(RaftPathError::NotLeader { .. } | RaftPathError::NoLeader) => {
                // Raft refuses this node's proposals although its metrics may still say
                // "leader" (openraft refuses writes once the leader lease has lapsed without a
                // quorum): its deadlines are stale. Drop them; a takeover that confirms
                // leadership again restarts them all.
                drop(st);
                self.step_down("raft refused the expiry proposal");
            }
            Err(e) => {
                // Still leading in this term (commit status unknown, say): take them again on
                // the next look; LeaseExpire is idempotent.
                l.deadlines.untake(&ids);
                tracing::warn!(
                    node_id = self.node.id,
                    term,
                    leases = ids.len(),
                    "lease expiry proposal failed, will retry: {e}"
                );
            }
        }
    }
}

/// A std mutex whose poisoning is ignored: the guarded data is plain bookkeeping that each
/// critical section leaves consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Fresh lease ids for grants with ID 0 and no request id, unique across nodes without
/// coordination (etcd's scheme): node id in bits 48..63, then the start time in ms and a
/// counter. Always positive.
struct IdGen {
    prefix: u64,
    next: AtomicU64,
}

impl IdGen {
    fn new(node_id: u64) -> IdGen {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        IdGen {
            prefix: (node_id & 0x7fff) << 48,
            next: AtomicU64::new((ms & 0xff_ffff_ffff) << 8),
        }
    }

    fn next(&self) -> i64 {
        let suffix = self.next.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff_ffff;
        // The prefix keeps bit 63 clear, so the cast is positive; 0 means "no lease".
        ((self.prefix | suffix) as i64).max(1)
    }
}

/// The lease id a grant with ID 0 gets from its request id: every retry proposes the same.
fn id_from_request_id(request_id: &str) -> i64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in request_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    ((h & (i64::MAX as u64)) as i64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_positive_distinct_and_carry_the_node() {
        let g = IdGen::new(3);
        let a = g.next();
        let b = g.next();
        assert!(a > 0 && b > 0 && a != b);
        assert_eq!(a >> 48, 3);
        let g = IdGen::new(u64::MAX);
        assert!(g.next() > 0);
    }

    #[test]
    fn request_id_derived_ids_are_stable_and_positive() {
        assert_eq!(id_from_request_id("r-1"), id_from_request_id("r-1"));
        assert_ne!(id_from_request_id("r-1"), id_from_request_id("r-2"));
        assert!(id_from_request_id("").is_positive());
    }
}
