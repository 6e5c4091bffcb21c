//! How long the state machine keeps others waiting: slow applies and the longest hold of its
//! write lock. Every write-lock holder (apply, deferred writes, compaction cleanup, snapshot
//! build and install) takes the lock through [`WriteGuard`], which times the hold, so a long
//! hold shows whoever caused it.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLockWriteGuard;
use std::time::{Duration, Instant};

use super::SmInner;

/// Counters of one state machine since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SmStats {
    /// Apply calls slower than the `slow apply` warning threshold (100 ms).
    pub slow_applies: u64,
    /// The slowest apply call, lock wait included, in microseconds.
    pub max_apply_us: u64,
    /// The longest hold of the write lock by anyone, in microseconds.
    pub max_write_lock_us: u64,
    /// History records removed by compaction cleanup.
    pub compacted_records_removed: u64,
}

#[derive(Default)]
pub(super) struct StatCells {
    slow_applies: AtomicU64,
    max_apply_us: AtomicU64,
    max_write_lock_us: AtomicU64,
    compacted_records_removed: AtomicU64,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl StatCells {
    pub fn apply_took(&self, took: Duration, slow: bool) {
        self.max_apply_us.fetch_max(micros(took), Ordering::Relaxed);
        if slow {
            self.slow_applies.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn removed(&self, records: usize) {
        self.compacted_records_removed
            .fetch_add(records as u64, Ordering::Relaxed);
    }

    pub fn get(&self) -> SmStats {
        SmStats {
            slow_applies: self.slow_applies.load(Ordering::Relaxed),
            max_apply_us: self.max_apply_us.load(Ordering::Relaxed),
            max_write_lock_us: self.max_write_lock_us.load(Ordering::Relaxed),
            compacted_records_removed: self.compacted_records_removed.load(Ordering::Relaxed),
        }
    }
}

/// The state machine's write lock, timed from acquisition to release.
pub(super) struct WriteGuard<'a> {
    guard: RwLockWriteGuard<'a, SmInner>,
    since: Instant,
    stats: &'a StatCells,
}

impl<'a> WriteGuard<'a> {
    pub fn new(guard: RwLockWriteGuard<'a, SmInner>, stats: &'a StatCells) -> Self {
        WriteGuard {
            guard,
            since: Instant::now(),
            stats,
        }
    }
}

impl Deref for WriteGuard<'_> {
    type Target = SmInner;
    fn deref(&self) -> &SmInner {
        &self.guard
    }
}

impl DerefMut for WriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut SmInner {
        &mut self.guard
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.stats
            .max_write_lock_us
            .fetch_max(micros(self.since.elapsed()), Ordering::Relaxed);
    }
}
