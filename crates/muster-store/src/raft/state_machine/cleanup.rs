//! Removing compacted history in the background, a bounded step at a time.
//!
//! Applying a Compact only records its revision (`mvcc::compact`); this task then removes the
//! history records it made garbage: each step takes the write lock, removes at most
//! [`STEP_RECORDS`] records (visiting at most [`STEP_KEYS`] keys) into the unwritten batch and
//! lets it go, so no apply waits long behind it. The removes are ordinary deferred writes: they
//! reach the tree with the batch, in order with the applies around them (crash-safe: a pass cut
//! short is redone when the store reopens, see `mvcc::compact`). A step is skipped while the
//! batch already holds [`WRITE_AT_REMOVES`] removes that cannot be written yet (a snapshot scan
//! needs the tree unchanged, or the log's durable watermark lags), which bounds the batch.
//! Each node removes at its own pace; what readers see does not depend on it.

use std::io;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::{Holder, SmInner, SmShared};
use crate::raft::{blocking, io_err};

/// Records removed per step at most (about: a step finishes the key it is on). etcd compacts
/// 1,000 keys per batch too.
pub const STEP_RECORDS: usize = 1_000;
/// Keys visited per step at most (keys with nothing to remove cost a visit too).
pub const STEP_KEYS: usize = 20_000;
/// Unwritten removes at which the batch is written at once, and further steps wait for it.
/// Writing is what a step's lock hold costs: at 1,000,000 keys sled took 20–60 µs per
/// removed record, so 10,000 removes held the lock for up to 0.9 s.
pub const WRITE_AT_REMOVES: usize = 2_000;
/// A step holding the lock longer than this is logged as a warning.
const SLOW_STEP: Duration = Duration::from_millis(100);
/// Pause between steps, so applies waiting for the lock get it.
const STEP_PAUSE: Duration = Duration::from_millis(2);
/// Pause while the batch cannot take more removes.
const BLOCKED_PAUSE: Duration = Duration::from_millis(10);
/// With nothing to remove, the task still wakes this often to notice the store is gone.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// What a cleanup step found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing to remove.
    Idle,
    /// Removed some; more to do.
    Progress,
    /// The pass is finished.
    Done,
    /// The unwritten batch is full of removes that cannot be written yet.
    Blocked,
}

impl SmInner {
    /// One bounded step of the removal of compacted history, into the unwritten batch, which
    /// is written if that makes it due. Call under the write lock.
    pub(super) fn cleanup_step(
        &mut self,
        shared: &SmShared,
        max_keys: usize,
        max_records: usize,
    ) -> io::Result<Step> {
        self.check_running()?;
        if !self.mvcc.compaction_pending() {
            return Ok(Step::Idle);
        }
        let started = Instant::now();
        let mut write_time = Duration::ZERO;
        if self.unwritten.removes >= WRITE_AT_REMOVES {
            if !self.write_due(shared) {
                return Ok(Step::Blocked);
            }
            self.write_unwritten(shared)?;
            write_time = started.elapsed();
        }
        let step = match self
            .mvcc
            .compact_step(&mut self.unwritten.batch, max_keys, max_records)
        {
            Ok(step) => step,
            // Part of the step may be in memory and in the batch: fail-stop, as for an apply.
            Err(e) => return Err(self.fail(io_err(e), "removing compacted history")),
        };
        shared.stats.removed(step.removed);
        self.unwritten.removes += step.removed;
        // The batch now holds removes (or the done marker) to write, like an applied group.
        self.unwritten.since.get_or_insert_with(Instant::now);
        if self.write_due(shared) {
            let writing = Instant::now();
            self.write_unwritten(shared)?;
            write_time += writing.elapsed();
        }
        let took = started.elapsed();
        if took > SLOW_STEP {
            tracing::warn!(
                step_ms = took.as_millis() as u64,
                write_ms = write_time.as_millis() as u64,
                removed = step.removed,
                "slow compaction cleanup step"
            );
        }
        Ok(if step.done {
            Step::Done
        } else {
            Step::Progress
        })
    }
}

impl SmShared {
    /// Runs one cleanup step now (tests drive removal by hand with the task paused).
    #[cfg(test)]
    pub(crate) fn cleanup_step_now(&self, max_keys: usize, max_records: usize) -> io::Result<Step> {
        self.write(Holder::Cleanup)
            .cleanup_step(self, max_keys, max_records)
    }

    /// Stops (or lets go on) the background cleanup task's steps.
    #[cfg(test)]
    pub(crate) fn pause_cleanup(&self, paused: bool) {
        self.cleanup_paused
            .store(paused, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Removes compacted history whenever some is pending; ends with the state machine (or on its
/// first storage failure, which the failing step has logged).
pub(super) async fn run_cleanup(shared: Weak<SmShared>) {
    let Some(wake) = shared.upgrade().map(|s| Arc::clone(&s.cleanup_wake)) else {
        return;
    };
    loop {
        let step = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            #[cfg(test)]
            if shared
                .cleanup_paused
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                drop(shared);
                tokio::time::sleep(BLOCKED_PAUSE).await;
                continue;
            }
            // A step holds the write lock and may write to sled, which stalled for up to
            // 560 ms at 1,000,000 keys: on the blocking pool, so that never holds a runtime
            // worker (and every task queued on it) as well.
            let step = blocking(move || {
                let shared = shared;
                let mut inner = shared.write(Holder::Cleanup);
                if inner.failed.is_some() {
                    return Ok(None);
                }
                inner
                    .cleanup_step(&shared, STEP_KEYS, STEP_RECORDS)
                    .map(Some)
            })
            .await;
            match step {
                Ok(Some(step)) => step,
                // Stopped, or failed (logged by the failing step).
                Ok(None) | Err(_) => return,
            }
        };
        match step {
            Step::Progress => tokio::time::sleep(STEP_PAUSE).await,
            Step::Blocked => tokio::time::sleep(BLOCKED_PAUSE).await,
            Step::Idle | Step::Done => {
                // A Compact (or an install) wakes the task; the timeout only notices a store
                // that is gone.
                let _ = tokio::time::timeout(IDLE_CHECK, wake.notified()).await;
            }
        }
    }
}
