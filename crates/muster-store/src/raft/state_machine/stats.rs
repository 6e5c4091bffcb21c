//! How long the state machine keeps others waiting: slow applies and the longest hold of its
//! write lock. Every write-lock holder (apply, deferred writes, compaction cleanup, snapshot
//! build and install) takes the lock through [`WriteGuard`], which times the hold, so a long
//! hold shows whoever caused it.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLockWriteGuard};
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
    /// Who held it that long (see [`Holder`]).
    pub max_write_lock_by: &'static str,
    /// History records removed by compaction cleanup.
    pub compacted_records_removed: u64,
}

/// Who takes the write lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Holder {
    Apply,
    /// The ticker's deferred write.
    Ticker,
    Cleanup,
    SnapshotBuild,
    SnapshotInstall,
}

impl Holder {
    fn name(self) -> &'static str {
        match self {
            Holder::Apply => "apply",
            Holder::Ticker => "deferred write",
            Holder::Cleanup => "compaction cleanup",
            Holder::SnapshotBuild => "snapshot build",
            Holder::SnapshotInstall => "snapshot install",
        }
    }
}

#[derive(Default)]
pub(super) struct StatCells {
    slow_applies: AtomicU64,
    max_apply_us: AtomicU64,
    max_write_lock_us: AtomicU64,
    /// Set after `max_write_lock_us` grows; a racing longer hold may briefly show the other's
    /// name (statistics only).
    max_write_lock_by: Mutex<&'static str>,
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

    pub fn reset(&self) {
        for cell in [
            &self.slow_applies,
            &self.max_apply_us,
            &self.max_write_lock_us,
            &self.compacted_records_removed,
        ] {
            cell.store(0, Ordering::Relaxed);
        }
        if let Ok(mut by) = self.max_write_lock_by.lock() {
            *by = "";
        }
    }

    fn held(&self, by: Holder, took: Duration) {
        let us = micros(took);
        if self.max_write_lock_us.fetch_max(us, Ordering::Relaxed) < us {
            if let Ok(mut name) = self.max_write_lock_by.lock() {
                *name = by.name();
            }
        }
    }

    pub fn get(&self) -> SmStats {
        SmStats {
            slow_applies: self.slow_applies.load(Ordering::Relaxed),
            max_apply_us: self.max_apply_us.load(Ordering::Relaxed),
            max_write_lock_us: self.max_write_lock_us.load(Ordering::Relaxed),
            max_write_lock_by: self.max_write_lock_by.lock().map_or("", |by| *by),
            compacted_records_removed: self.compacted_records_removed.load(Ordering::Relaxed),
        }
    }
}

/// The state machine's write lock, timed from acquisition to release.
pub(super) struct WriteGuard<'a> {
    guard: RwLockWriteGuard<'a, SmInner>,
    since: Instant,
    by: Holder,
    stats: &'a StatCells,
}

impl<'a> WriteGuard<'a> {
    pub fn new(guard: RwLockWriteGuard<'a, SmInner>, by: Holder, stats: &'a StatCells) -> Self {
        WriteGuard {
            guard,
            since: Instant::now(),
            by,
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
        self.stats.held(self.by, self.since.elapsed());
    }
}
