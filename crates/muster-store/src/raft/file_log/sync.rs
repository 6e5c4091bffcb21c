//! The "raft-log-sync" thread: group commit. Appends queue their file and completion callback;
//! the thread syncs each distinct file once per drained group, raises the durable watermark and
//! completes every callback.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use openraft::storage::IOFlushed;

use super::{clone_err, TypeConfig, SLOW_SYNC_MS};

/// A batch waiting for its fdatasync.
pub(super) struct SyncJob {
    pub(super) file: Arc<File>,
    /// Index of the batch's last entry: durable once the job's sync succeeds.
    pub(super) last_index: u64,
    pub(super) callback: IOFlushed<TypeConfig>,
}

/// The sync thread: one fdatasync per distinct file per drained group, then the callbacks.
pub(super) fn run_sync_thread(rx: mpsc::Receiver<SyncJob>, durable: &AtomicU64) {
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
pub(super) fn sync_group(group: Vec<SyncJob>, durable: &AtomicU64) -> usize {
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
        if let Some(last) = group.iter().map(|j| j.last_index).max() {
            durable.fetch_max(last, Ordering::SeqCst);
        }
    }
    for job in group {
        job.callback
            .io_completed(result.as_ref().map(|_| ()).map_err(clone_err));
    }
    synced
}
