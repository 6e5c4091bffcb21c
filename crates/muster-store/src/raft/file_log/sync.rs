//! The "raft-log-sync" thread: group commit. Appends queue their file and completion callback;
//! the thread syncs each distinct file once per drained group, raises the durable watermark and
//! completes every callback.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use openraft::storage::IOFlushed;

use super::{clone_err, TypeConfig, SLOW_SYNC_MS};

/// The durable watermark (every live entry at or below it is synced) and the truncation
/// generation that keeps it honest: a sync queued before a truncate covers entries that the
/// truncate dropped, so when it completes it must not raise the watermark over indexes that
/// now hold newer, unsynced entries (or none). Both change under one lock.
#[derive(Clone)]
pub(super) struct Watermark {
    durable: Arc<AtomicU64>,
    generation: Arc<Mutex<u64>>,
}

impl Watermark {
    pub(super) fn new(durable_index: u64) -> Watermark {
        Watermark {
            durable: Arc::new(AtomicU64::new(durable_index)),
            generation: Arc::new(Mutex::new(0)),
        }
    }

    /// The shared watermark itself, for readers (the state machine).
    pub(super) fn durable(&self) -> Arc<AtomicU64> {
        self.durable.clone()
    }

    /// The current truncation generation, recorded by each queued sync.
    pub(super) fn generation(&self) -> u64 {
        *self.generation.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After a sync of entries written in `generation`: raises the watermark to `last`, unless
    /// a truncate came since.
    pub(super) fn synced(&self, last: u64, generation: u64) {
        let g = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        if *g == generation {
            self.durable.fetch_max(last, Ordering::SeqCst);
        }
    }

    /// A truncate keeps entries up to `keep_last`: the watermark drops to it, and syncs queued
    /// before now no longer raise it.
    pub(super) fn truncated(&self, keep_last: u64) {
        let mut g = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        *g += 1;
        self.durable.fetch_min(keep_last, Ordering::SeqCst);
    }

    #[cfg(test)]
    pub(super) fn get(&self) -> u64 {
        self.durable.load(Ordering::SeqCst)
    }
}

/// A batch waiting for its fdatasync.
pub(super) struct SyncJob {
    pub(super) file: Arc<File>,
    /// Index of the batch's last entry: durable once the job's sync succeeds.
    pub(super) last_index: u64,
    /// The truncation generation the batch was written in (see [`Watermark`]).
    pub(super) generation: u64,
    pub(super) callback: IOFlushed<TypeConfig>,
}

/// The sync thread: one fdatasync per distinct file per drained group, then the callbacks.
pub(super) fn run_sync_thread(rx: mpsc::Receiver<SyncJob>, durable: &Watermark) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while let Ok(more) = rx.try_recv() {
            group.push(more);
        }
        sync_group(group, durable);
    }
}

/// Syncs each distinct file of `group` once, raises `durable` past the group on success and
/// completes every callback with the outcome. Returns how many files were synced.
pub(super) fn sync_group(group: Vec<SyncJob>, durable: &Watermark) -> usize {
    let started = Instant::now();
    let mut files: Vec<&Arc<File>> = Vec::new();
    for job in &group {
        if !files.iter().any(|f| Arc::ptr_eq(f, &job.file)) {
            files.push(&job.file);
        }
    }
    let synced = files.len();
    let result = files.iter().try_for_each(|f| f.sync_data());
    let ms = started.elapsed().as_millis();
    if ms > SLOW_SYNC_MS {
        tracing::warn!(
            sync_ms = ms as u64,
            batches = group.len(),
            "slow raft log fdatasync"
        );
    }
    if result.is_ok() {
        for job in &group {
            durable.synced(job.last_index, job.generation);
        }
    }
    for job in group {
        job.callback
            .io_completed(result.as_ref().map(|_| ()).map_err(clone_err));
    }
    synced
}
