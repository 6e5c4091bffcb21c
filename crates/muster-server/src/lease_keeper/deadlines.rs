//! The leader's lease deadlines: plain data, no clock and no I/O. Every method takes `now`, so
//! the keeper decides when time is read and tests drive time by hand.
//!
//! A lease is *live* (in the expiry queue, renewable) until its deadline passes; then it is
//! *expired* — renewals are refused (etcd does the same: a lease is never revived after its
//! deadline) — until the reaper *takes* it, marking it *expiring* while its LeaseExpire entry is
//! in flight. The lease leaves this map when the store says it is gone.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    ttl_secs: i64,
    deadline: Instant,
    /// Taken by the reaper: its LeaseExpire is in flight.
    expiring: bool,
}

/// What a renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Renewal {
    /// Renewed: the deadline is now + TTL.
    Renewed { ttl_secs: i64 },
    /// The deadline has passed (or expiry is in flight): not renewed.
    Expired,
    /// Not tracked here (the caller may look in the store).
    Unknown,
}

/// Deadlines of every lease the leader knows, with an expiry queue ordered by deadline.
#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    leases: HashMap<i64, Entry>,
    /// (deadline, id) of every lease not yet taken by the reaper.
    queue: BTreeSet<(Instant, i64)>,
}

fn deadline_of(now: Instant, ttl_secs: i64) -> Instant {
    // TTLs are bounded by config (at most ~285 years); saturate rather than overflow anyway.
    let ttl = Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(0));
    now.checked_add(ttl)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

impl Deadlines {
    /// Every lease of `leases` (id, TTL) with its deadline at `now + TTL`: what a new leader
    /// starts from, so no lease expires because of an election.
    pub fn restart_all(leases: &[(i64, i64)], now: Instant) -> Deadlines {
        let mut d = Deadlines::default();
        for &(id, ttl_secs) in leases {
            d.track(id, ttl_secs, now);
        }
        d
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// Tracks `id` with its deadline at `now + TTL`, replacing any earlier entry unless that
    /// one's expiry is in flight (a grant of a new lease under a just-expired id waits for the
    /// reconcile after the expiry applies).
    pub fn track(&mut self, id: i64, ttl_secs: i64, now: Instant) {
        if let Some(old) = self.leases.get(&id) {
            if old.expiring {
                return;
            }
            self.queue.remove(&(old.deadline, id));
        }
        let deadline = deadline_of(now, ttl_secs);
        self.leases.insert(
            id,
            Entry {
                ttl_secs,
                deadline,
                expiring: false,
            },
        );
        self.queue.insert((deadline, id));
    }

    /// Stops tracking `id` (revoked or expired in the store).
    pub fn forget(&mut self, id: i64) {
        if let Some(old) = self.leases.remove(&id) {
            self.queue.remove(&(old.deadline, id));
        }
    }

    /// A keep-alive: moves a live lease's deadline to `now + TTL`.
    pub fn renew(&mut self, id: i64, now: Instant) -> Renewal {
        let Some(entry) = self.leases.get_mut(&id) else {
            return Renewal::Unknown;
        };
        if entry.expiring || entry.deadline <= now {
            return Renewal::Expired;
        }
        self.queue.remove(&(entry.deadline, id));
        entry.deadline = deadline_of(now, entry.ttl_secs);
        self.queue.insert((entry.deadline, id));
        Renewal::Renewed {
            ttl_secs: entry.ttl_secs,
        }
    }

    /// (granted TTL, time left) of a tracked lease; `None` time left once it has expired.
    pub fn remaining(&self, id: i64, now: Instant) -> Option<(i64, Option<Duration>)> {
        let entry = self.leases.get(&id)?;
        let left = (!entry.expiring && entry.deadline > now).then(|| entry.deadline - now);
        Some((entry.ttl_secs, left))
    }

    /// Takes up to `max` leases whose deadline is at or before `now`, earliest first, marking
    /// them expiring. Returns (id, deadline).
    pub fn take_expired(&mut self, now: Instant, max: usize) -> Vec<(i64, Instant)> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.queue.first() {
                Some(&(deadline, id)) if deadline <= now => {
                    self.queue.pop_first();
                    if let Some(e) = self.leases.get_mut(&id) {
                        e.expiring = true;
                    }
                    out.push((id, deadline));
                }
                _ => break,
            }
        }
        out
    }

    /// A LeaseExpire proposal failed while this node still leads: the leases go back to the
    /// queue with their (passed) deadlines, so the next look takes them again.
    pub fn untake(&mut self, ids: &[i64]) {
        for id in ids {
            if let Some(e) = self.leases.get_mut(id) {
                if e.expiring {
                    e.expiring = false;
                    self.queue.insert((e.deadline, *id));
                }
            }
        }
    }

    /// Pushes every live deadline `by` later: the leader itself was stalled, so the time it did
    /// not run cannot count against clients whose keep-alives were waiting in its queues.
    pub fn postpone_all(&mut self, by: Duration) {
        let queue = std::mem::take(&mut self.queue);
        for (deadline, id) in queue {
            let later = deadline.checked_add(by).unwrap_or(deadline);
            if let Some(e) = self.leases.get_mut(&id) {
                e.deadline = later;
            }
            self.queue.insert((later, id));
        }
    }

    /// Brings the tracked set in line with the store's `leases` (id, TTL): leases the store
    /// has and this map lacks start at `now + TTL`; leases the store no longer has are dropped.
    /// Returns (added, dropped).
    pub fn reconcile(&mut self, leases: &[(i64, i64)], now: Instant) -> (usize, usize) {
        let mut in_store = std::collections::HashSet::with_capacity(leases.len());
        let mut added = 0;
        for &(id, ttl_secs) in leases {
            in_store.insert(id);
            if !self.leases.contains_key(&id) {
                self.track(id, ttl_secs, now);
                added += 1;
            }
        }
        let gone: Vec<i64> = self
            .leases
            .keys()
            .copied()
            .filter(|id| !in_store.contains(id))
            .collect();
        for id in &gone {
            self.forget(*id);
        }
        (added, gone.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn renew_moves_the_deadline_until_it_passes() {
        let t0 = Instant::now();
        let mut d = Deadlines::restart_all(&[(1, 5), (2, 10)], t0);
        assert_eq!(d.remaining(1, t0), Some((5, Some(secs(5)))));
        assert_eq!(d.renew(1, t0 + secs(4)), Renewal::Renewed { ttl_secs: 5 });
        assert_eq!(d.remaining(1, t0 + secs(5)), Some((5, Some(secs(4)))));
        assert!(d.take_expired(t0 + secs(8), 10).is_empty());
        // Past the deadline: not renewable, even before the reaper looks.
        assert_eq!(d.renew(1, t0 + secs(9)), Renewal::Expired);
        assert_eq!(d.remaining(1, t0 + secs(9)), Some((5, None)));
        assert_eq!(d.renew(3, t0), Renewal::Unknown);
    }

    #[test]
    fn take_expired_is_earliest_first_bounded_and_marks_expiring() {
        let t0 = Instant::now();
        let mut d = Deadlines::restart_all(&[(1, 3), (2, 1), (3, 2), (4, 60)], t0);
        let taken = d.take_expired(t0 + secs(3), 2);
        assert_eq!(taken, vec![(2, t0 + secs(1)), (3, t0 + secs(2))]);
        assert_eq!(d.take_expired(t0 + secs(3), 10), vec![(1, t0 + secs(3))]);
        assert!(d.take_expired(t0 + secs(3), 10).is_empty(), "taken once");
        // In flight: not renewable, and a re-grant under the same id waits.
        assert_eq!(d.renew(2, t0 + secs(3)), Renewal::Expired);
        d.track(2, 9, t0 + secs(3));
        assert_eq!(d.remaining(2, t0 + secs(3)), Some((1, None)));
        // A failed proposal puts them back; the next look takes them again.
        d.untake(&[2, 3]);
        assert_eq!(d.take_expired(t0 + secs(3), 10).len(), 2);
        d.forget(1);
        d.forget(2);
        d.forget(3);
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn postpone_all_shifts_live_deadlines() {
        let t0 = Instant::now();
        let mut d = Deadlines::restart_all(&[(1, 2), (2, 4)], t0);
        d.postpone_all(secs(3));
        assert!(d.take_expired(t0 + secs(4), 10).is_empty());
        assert_eq!(d.take_expired(t0 + secs(5), 10), vec![(1, t0 + secs(5))]);
        assert_eq!(d.remaining(2, t0 + secs(5)), Some((4, Some(secs(2)))));
    }

    #[test]
    fn reconcile_adds_missing_and_drops_gone() {
        let t0 = Instant::now();
        let mut d = Deadlines::restart_all(&[(1, 5), (2, 5)], t0);
        d.renew(1, t0 + secs(1));
        assert_eq!(d.reconcile(&[(1, 5), (3, 7)], t0 + secs(2)), (1, 1));
        assert!(!d.contains(2));
        // Known leases keep their deadline; new ones start now.
        assert_eq!(d.remaining(1, t0 + secs(2)), Some((5, Some(secs(4)))));
        assert_eq!(d.remaining(3, t0 + secs(2)), Some((7, Some(secs(7)))));
    }
}
