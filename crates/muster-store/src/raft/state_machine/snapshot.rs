//! Snapshots of the state machine: building one from the tree, installing one into it, and the
//! snapshot file (`<dir>/snapshot.bin`, replaced crash-atomically).
//!
//! Everything here runs on tokio's blocking pool ([`blocking`]): a snapshot of ~100 MB takes
//! most of a second to scan, encode and write, which on a runtime worker stalled heartbeats.
//! The rule that lets a build scan the tree without the state machine's lock is in the parent
//! module's doc ("Snapshots and the tree").
//!
//! Compacted history the cleanup has not removed yet is left out of a snapshot as it is built
//! (`mvcc::drop_compacted`, a function of the scanned records alone): the snapshot holds what a
//! finished removal would have left, so installing it gives the same state, minus the garbage.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use openraft::RaftSnapshotBuilder;
use serde::{Deserialize, Serialize};

use super::{
    Holder, SmShared, StateMachineStore, Unwritten, KEY_APPLIED, KEY_MEMBERSHIP, META_PREFIX,
};
use crate::mvcc::{drop_compacted, Mvcc};
use crate::raft::{blocking, io_err, Snapshot, SnapshotData, SnapshotMeta, TypeConfig};

const SNAPSHOT_FILE: &str = "snapshot.bin";

/// What a snapshot carries: every keyspace record (history, leases, MVCC meta), in key order.
#[derive(Serialize, Deserialize)]
pub struct SnapshotPayload {
    pub records: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: SnapshotData,
}

fn snapshot_path(dir: &Path) -> PathBuf {
    dir.join(SNAPSHOT_FILE)
}

/// Writes the snapshot file crash-atomically: temp file, fsync, rename, directory fsync.
/// Callers hold the snapshot gate, so two writers never share the temp file.
fn save_snapshot_file(dir: &Path, snap: &StoredSnapshot) -> io::Result<()> {
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let mut w = BufWriter::new(File::create(&tmp)?);
    // Encoded straight into the file: no second in-memory copy of the data.
    bincode::serialize_into(&mut w, snap).map_err(io_err)?;
    w.flush()?;
    w.get_ref().sync_all()?;
    drop(w);
    std::fs::rename(&tmp, snapshot_path(dir))?;
    // The rename is what makes the new file current: without the directory sync a crash could
    // bring back the old one, which is still a valid snapshot, so a failure here is not fatal.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn load_snapshot_file(dir: &Path) -> io::Result<Option<StoredSnapshot>> {
    match std::fs::read(snapshot_path(dir)) {
        Ok(bytes) => Ok(Some(bincode::deserialize(&bytes).map_err(io_err)?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The state at one applied log id, read off the tree: what a snapshot and a backup carry.
pub(super) struct Scanned {
    pub meta: SnapshotMeta,
    /// Every keyspace record, in key order, compacted history left out.
    pub records: Vec<(Vec<u8>, Vec<u8>)>,
    /// Compacted history records left out.
    pub dropped: usize,
    pub scan_ms: u64,
}

/// Scans the state: under the write lock only long enough to write the unwritten batch,
/// record the applied log id and membership and suspend deferred writes; then reads the tree
/// without the lock, resumes the writes and leaves out compacted history (if removal is still
/// under way). The caller holds the snapshot gate.
pub(super) fn scan(shared: &SmShared) -> io::Result<Scanned> {
    let started = Instant::now();
    let (meta, garbage_possible, suspended) = {
        let mut inner = shared.write(Holder::SnapshotBuild);
        // The snapshot is read from the tree, and the log is purged behind it: everything
        // applied must be in the tree first.
        inner.write_unwritten(shared)?;
        let meta = SnapshotMeta {
            last_log_id: inner.last_applied,
            last_membership: inner.membership.clone(),
        };
        let garbage_possible = inner.mvcc.compaction_pending();
        (meta, garbage_possible, shared.suspend_writes(&mut inner))
    };
    #[cfg(test)]
    shared.run_scan_hook();
    // Exactly the state at `meta.last_log_id`: nothing writes the tree while writes are
    // suspended and this scan holds the gate (see the parent module's doc).
    let mut records = Vec::new();
    for item in shared.tree.iter() {
        let (k, v) = item.map_err(io_err)?;
        if k.first() != Some(&META_PREFIX) {
            records.push((k.to_vec(), v.to_vec()));
        }
    }
    drop(suspended);
    let scan_ms = started.elapsed().as_millis() as u64;
    // Decodes every history record up to the compact revision: only worth it while a removal
    // pass is still running (a finished pass leaves nothing to drop).
    let dropped = if garbage_possible {
        drop_compacted(&mut records).map_err(io_err)?
    } else {
        0
    };
    Ok(Scanned {
        meta,
        records,
        dropped,
        scan_ms,
    })
}

/// Builds a snapshot ([`scan`]), encodes it and saves the file.
fn build(shared: &SmShared, dir: &Path) -> io::Result<Snapshot> {
    let started = Instant::now();
    let Scanned {
        meta,
        records,
        dropped,
        scan_ms,
    } = scan(shared)?;
    let data = bincode::serialize(&SnapshotPayload { records }).map_err(io_err)?;
    let stored = StoredSnapshot { meta, data };
    save_snapshot_file(dir, &stored)?;
    let index = stored.meta.last_log_id.as_ref().map(|l| l.index);
    tracing::info!(
        ?index,
        bytes = stored.data.len(),
        scan_ms,
        compacted_left_out = dropped,
        total_ms = started.elapsed().as_millis() as u64,
        "built snapshot"
    );
    Ok(Snapshot {
        meta: stored.meta,
        snapshot: stored.data,
    })
}

/// Replaces the state with the snapshot's: decodes it and prepares the tree rewrite without
/// the lock; takes the write lock for the rewrite, opening the new keyspace and the swap.
fn install(
    shared: &SmShared,
    db: &sled::Db,
    dir: &Path,
    meta: SnapshotMeta,
    data: SnapshotData,
) -> io::Result<()> {
    shared.write(Holder::SnapshotInstall).check_running()?;
    let payload: SnapshotPayload = bincode::deserialize(&data).map_err(io_err)?;
    let suspended = shared.suspend_writes(&mut shared.write(Holder::SnapshotInstall));
    // One batch: sled applies it atomically, so a crash leaves the old state or the new. The
    // keys to remove are listed without the lock: with deferred writes suspended and builds
    // held off by the gate nothing changes the tree, and openraft applies entries on the task
    // that is waiting for this install.
    let mut batch = sled::Batch::default();
    for item in shared.tree.iter() {
        let (k, _) = item.map_err(io_err)?;
        batch.remove(k);
    }
    for (k, v) in payload.records {
        batch.insert(k, v);
    }
    batch.insert(
        KEY_APPLIED,
        bincode::serialize(&meta.last_log_id).map_err(io_err)?,
    );
    batch.insert(
        KEY_MEMBERSHIP,
        bincode::serialize(&meta.last_membership).map_err(io_err)?,
    );
    {
        // The rewrite and the new keyspace's open happen under the lock: a reader still on the
        // old index must never load history from the new tree. (Opening the keyspace from the
        // payload instead of the tree would shorten this; not done yet.)
        let mut inner = shared.write(Holder::SnapshotInstall);
        if let Err(e) = shared.write_batch(batch) {
            return Err(inner.fail(io_err(e), "writing an installed snapshot to sled"));
        }
        inner.mvcc = match Mvcc::open(shared.tree.clone()) {
            Ok(mvcc) => mvcc,
            Err(e) => return Err(inner.fail(io_err(e), "opening an installed snapshot")),
        };
        // Unwritten applied state is older than the snapshot, which replaced it.
        inner.unwritten = Unwritten::default();
        // The revisions skipped by the snapshot were never published: live watchers
        // re-read them from the new history.
        shared.hub.reset(&inner.mvcc);
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        if inner.mvcc.compaction_pending() {
            shared.cleanup_wake.notify_one();
        }
    }
    drop(suspended);
    db.flush().map_err(io_err)?;
    let index = meta.last_log_id.as_ref().map(|l| l.index);
    save_snapshot_file(dir, &StoredSnapshot { meta, data })?;
    tracing::info!(?index, "installed snapshot");
    Ok(())
}

impl StateMachineStore {
    /// [`openraft::storage::RaftStateMachine::install_snapshot`], off the runtime.
    pub(super) async fn install(&self, meta: &SnapshotMeta, data: SnapshotData) -> io::Result<()> {
        // Moved into the blocking task: were this future dropped, the install would still run
        // to its end with the gate held.
        let gate = self.shared.snapshot_gate.clone().lock_owned().await;
        let (shared, db, dir, meta) = (
            Arc::clone(&self.shared),
            self.db.clone(),
            self.dir.clone(),
            meta.clone(),
        );
        blocking(move || {
            let _gate = gate;
            install(&shared, &db, &dir, meta, data)
        })
        .await
    }

    /// [`openraft::storage::RaftStateMachine::get_current_snapshot`], off the runtime.
    pub(super) async fn current_snapshot(&self) -> io::Result<Option<Snapshot>> {
        let dir = self.dir.clone();
        let stored = blocking(move || load_snapshot_file(&dir)).await?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: s.data,
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let gate = self.shared.snapshot_gate.clone().lock_owned().await;
        let (shared, dir) = (Arc::clone(&self.shared), self.dir.clone());
        blocking(move || {
            let _gate = gate;
            build(&shared, &dir)
        })
        .await
    }
}
