//! The Raft state machine: applies committed entries to the MVCC keyspace, persists the applied
//! log id and membership in the same atomic sled batch as the data; fail-stop on storage errors.
//! Building and installing snapshots is in `snapshot`; removing compacted history in the
//! background, a bounded step at a time, in `cleanup`; lock-hold and slow-apply counters in
//! `stats`.
//!
//! Readers (Range, Status, watch catch-up) share [`SmShared`] with the applier: apply holds the
//! write lock while it changes the keyspace, so a reader sees whole entries or nothing.
//! After each applied group, apply publishes the group's events to the [`WatchHub`] while still
//! holding the write lock (the hub relies on that ordering).
//!
//! Deferred writes: the sled batch is not written per applied group but collects groups for up
//! to [`WRITE_EVERY`] (or [`WRITE_AT_BYTES`] of keys and values) and is then written in one
//! piece, by apply or by a ticker task when applies stop. Each sled batch write costs a log-buffer
//! roll and hand-offs to sled's I/O threads; per group that was a third of a node's CPU per
//! write. Nothing is lost by waiting: the Raft log is durable on its own, the batch carries the
//! applied log id with the data, so after a crash the store reopens at some applied entry and
//! openraft re-applies the rest from the log; and the log is never purged past a snapshot, which
//! writes the batch first. Until then reads see the unwritten state from memory (the index) and
//! from the history's pending records.
//!
//! Fail-stop: a storage error is fatal. The first failed write of the batch (or a failed apply,
//! which may leave half a group in memory and in the batch) is recorded in [`SmInner`]; from
//! then on apply, snapshot build and install return it to openraft, which stops Raft, and the
//! ticker stops writing. The batch itself is kept, never dropped: a failed write must not let
//! a later batch record an applied log id past entries that never reached the disk (openraft
//! does not re-apply entries at or below the applied id after a restart).
//!
//! Snapshots and the tree (`snapshot`): a build takes the write lock only to write the batch,
//! record the applied log id and membership and suspend deferred writes; it then scans the tree
//! without the lock, on a blocking thread. The scan sees exactly the state at that log id
//! because of one rule: **while a scan runs, nothing writes the tree.** Deferred writes wait
//! (`write_due` says no, the byte bound included; applies go on, their state stays in the batch,
//! which readers already see from memory) and resume when the scan ends, on error too. Installs
//! and other builds wait on the snapshot gate. Everything else that changes the tree,
//! compaction and lease expiry included, goes through the batch (the MVCC layer only ever writes
//! into the caller's batch; compaction's removal of old history is deferred writes too, see
//! `cleanup`). New code that writes the tree must go through the batch or take the gate.
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, Weak};
use std::time::{Duration, Instant};

use futures::{Stream, TryStreamExt};
use muster_types::{CommandResponse, Event, ResponseBody};
use openraft::storage::{ApplyResponder, EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};

use super::{io_err, LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig};
use crate::error::StoreError;
use crate::mvcc::Mvcc;
use crate::watch::WatchHub;

mod backup;
mod cleanup;
mod snapshot;
mod stats;

pub use backup::{inspect_backup, restore_backup, BackupError, BackupSummary, BACKUP_MAGIC};
#[cfg(test)]
pub(crate) use cleanup::Step;
pub use cleanup::{STEP_KEYS, STEP_RECORDS, WRITE_AT_REMOVES};
pub use snapshot::SnapshotPayload;
pub use stats::SmStats;
use stats::{Holder, StatCells, WriteGuard};

/// Raft-side meta lives in the state machine's tree under this prefix, so it is written in the
/// same atomic batch as the data it describes. The MVCC layer never uses this prefix.
const KEY_APPLIED: &[u8] = b"s/applied";
/// The sled tree of `DB_DIR` the state machine lives in.
const TREE: &str = "sm";
const KEY_MEMBERSHIP: &[u8] = b"s/membership";
const META_PREFIX: u8 = b's';
/// An apply batch slower than this is logged as a warning.
const SLOW_APPLY_MS: u128 = 100;
/// The longest applied state waits in memory before its sled batch is written.
pub const WRITE_EVERY: Duration = Duration::from_millis(100);
/// Unwritten keys and values past this many bytes are written at once.
pub const WRITE_AT_BYTES: usize = 8 << 20;

/// State shared between the applier and readers.
pub struct SmShared {
    tree: sled::Tree,
    /// The Raft log's durable watermark, once [`StateMachineStore::hold_writes_until_durable`]
    /// is called: deferred writes wait until it reaches the last applied index.
    log_durable: std::sync::OnceLock<Arc<AtomicU64>>,
    inner: RwLock<SmInner>,
    hub: Arc<WatchHub>,
    /// Fault injection: this many of the next tree writes fail (see
    /// [`SmShared::inject_write_failures`]).
    fail_writes: AtomicU32,
    /// Held by a snapshot build from recording its applied log id until its file is saved, and
    /// by an install throughout: one at a time scans or rewrites the tree and writes the
    /// snapshot file.
    snapshot_gate: Arc<tokio::sync::Mutex<()>>,
    /// Scans in progress that need the tree unchanged; deferred writes wait while it is not
    /// zero. Raised only under the write lock (see [`SmShared::suspend_writes`]).
    writes_suspended: AtomicUsize,
    /// Wakes the cleanup task when compacted history is pending (see `cleanup`).
    cleanup_wake: Arc<tokio::sync::Notify>,
    stats: StatCells,
    /// Run by the next snapshot build once its scan is about to start, without the lock.
    #[cfg(test)]
    scan_hook: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// Set by tests that drive the cleanup by hand: the cleanup task does nothing.
    #[cfg(test)]
    cleanup_paused: std::sync::atomic::AtomicBool,
}

/// Deferred writes of the tree are suspended while this lives (see the module doc).
struct WritesSuspended<'a>(&'a SmShared);

impl Drop for WritesSuspended<'_> {
    fn drop(&mut self) {
        self.0.writes_suspended.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The state under the apply lock.
pub struct SmInner {
    pub mvcc: Mvcc,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    unwritten: Unwritten,
    /// Set by the first failed write (or failed apply); from then on the state machine refuses
    /// everything (fail-stop).
    failed: Option<Arc<io::Error>>,
}

fn stopped(source: &Arc<io::Error>) -> io::Error {
    io_err(StoreError::Stopped {
        source: source.clone(),
    })
}

/// Applied groups whose sled batch is not written yet.
#[derive(Default)]
struct Unwritten {
    batch: sled::Batch,
    /// When the first unwritten group was applied; `None` when there is nothing to write.
    since: Option<Instant>,
    /// Bytes of keys and values in the unwritten events (a bound on the batch's size).
    bytes: usize,
    /// History records the batch removes (compaction cleanup; bounded by `WRITE_AT_REMOVES`).
    removes: usize,
}

impl SmInner {
    /// Writes the unwritten batch to the tree (atomically: sled applies a batch whole or not at
    /// all) and tells the MVCC layer its pending history is now in the tree. A failed write
    /// stops the state machine (see [`Self::fail`]).
    fn write_unwritten(&mut self, shared: &SmShared) -> io::Result<()> {
        self.check_running()?;
        if self.unwritten.since.is_none() {
            return Ok(());
        }
        // A copy is written (clones share the values' buffers): if the write fails, the batch
        // stays with the applied state it carries instead of vanishing while a later batch
        // records a newer applied log id.
        if let Err(e) = shared.write_batch(self.unwritten.batch.clone()) {
            return Err(self.fail(io_err(e), "writing applied state to sled"));
        }
        self.unwritten = Unwritten::default();
        self.mvcc.persisted();
        Ok(())
    }

    /// Applies one group of entries: memory at once, the writes into the unwritten batch with
    /// the group's applied log id and membership, and writes the batch when it is due. Returns
    /// the group's events; `replies` gets each responder with its response.
    fn apply_group(
        &mut self,
        shared: &SmShared,
        entries: Vec<EntryResponder<TypeConfig>>,
        replies: &mut Vec<(ApplyResponder<TypeConfig>, CommandResponse)>,
    ) -> io::Result<Vec<Event>> {
        let mut events: Vec<Event> = Vec::new();
        for (entry, responder) in entries {
            let response = match entry.payload {
                EntryPayload::Blank => empty_response(&self.mvcc),
                EntryPayload::Normal(log_entry) => self
                    .mvcc
                    .apply(
                        log_entry.time_ms,
                        &log_entry.cmd,
                        &mut self.unwritten.batch,
                        &mut events,
                    )
                    .map_err(io_err)?,
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    empty_response(&self.mvcc)
                }
            };
            self.last_applied = Some(entry.log_id);
            if let Some(r) = responder {
                replies.push((r, response));
            }
        }
        self.unwritten.batch.insert(
            KEY_APPLIED,
            bincode::serialize(&self.last_applied).map_err(io_err)?,
        );
        self.unwritten.batch.insert(
            KEY_MEMBERSHIP,
            bincode::serialize(&self.membership).map_err(io_err)?,
        );
        self.unwritten.since.get_or_insert_with(Instant::now);
        self.unwritten.bytes += events
            .iter()
            .map(|e| e.kv.key.len() + e.kv.value.len())
            .sum::<usize>();
        if self.write_due(shared) {
            self.write_unwritten(shared)?;
        }
        Ok(events)
    }

    /// `Err(Stopped)` once a write has failed: nothing may be applied, written or snapshotted
    /// on top of state that is not on disk.
    fn check_running(&self) -> io::Result<()> {
        match &self.failed {
            Some(source) => Err(stopped(source)),
            None => Ok(()),
        }
    }

    /// Stops the state machine after a storage failure in `what`: records the failure, so
    /// every later apply, snapshot and deferred write fails with it, and says so once, loudly.
    /// Returns the error to hand to openraft, which treats it as fatal and stops Raft.
    fn fail(&mut self, e: io::Error, what: &str) -> io::Error {
        if let Some(source) = &self.failed {
            return stopped(source);
        }
        tracing::error!(
            error = %e,
            last_applied = ?self.last_applied,
            "{what} failed: the state machine stops; Raft stops this node"
        );
        let source = Arc::new(e);
        let err = stopped(&source);
        self.failed = Some(source);
        err
    }

    /// Whether the unwritten batch should be written now: it is old or big enough, the Raft
    /// log is durable through everything it applied (once the log's watermark is given), and no
    /// snapshot scan needs the tree unchanged.
    fn write_due(&self, shared: &SmShared) -> bool {
        if shared.writes_suspended.load(Ordering::SeqCst) > 0 {
            return false;
        }
        let due = self.unwritten.bytes >= WRITE_AT_BYTES
            || self.unwritten.removes >= WRITE_AT_REMOVES
            || self
                .unwritten
                .since
                .is_some_and(|since| since.elapsed() >= WRITE_EVERY);
        let applied = self.last_applied.map_or(0, |l| l.index);
        due && shared
            .log_durable
            .get()
            .is_none_or(|d| d.load(Ordering::SeqCst) >= applied)
    }
}

impl SmShared {
    /// The watch hub this state machine publishes applied events to.
    pub fn hub(&self) -> &Arc<WatchHub> {
        &self.hub
    }

    /// Slow applies and the longest write-lock hold since the store was opened (or the last
    /// [`SmShared::reset_stats`]).
    pub fn stats(&self) -> SmStats {
        self.stats.get()
    }

    /// Starts [`SmShared::stats`] over, so a test or benchmark can measure one phase.
    pub fn reset_stats(&self) {
        self.stats.reset();
    }

    /// A read view of the state machine. Never hold it across an `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, SmInner> {
        // A poisoned lock means an apply panicked half-way: the state is unknown and serving
        // from it would be wrong, so propagate the panic.
        self.inner
            .read()
            .unwrap_or_else(|p| panic!("state machine lock poisoned: {p}"))
    }

    /// For fault-injection tests only: makes the next `n` writes of the state machine's tree
    /// fail with an I/O error, as a failing disk would.
    #[doc(hidden)]
    pub fn inject_write_failures(&self, n: u32) {
        self.fail_writes.store(n, Ordering::SeqCst);
    }

    /// For corruption-check tests only: changes `key`'s live value on this node alone, as a
    /// bit flip on one member's disk would, without a log entry or a revision. Returns
    /// whether the key was live.
    #[doc(hidden)]
    pub fn corrupt_value_for_testing(&self, key: &[u8], value: &[u8]) -> io::Result<bool> {
        let mut guard = self.write(Holder::Apply);
        let inner = &mut *guard;
        let changed = inner
            .mvcc
            .corrupt_value_for_testing(&mut inner.unwritten.batch, key, value)
            .map_err(io_err)?;
        inner.unwritten.since.get_or_insert_with(Instant::now);
        Ok(changed)
    }

    /// How many injected write failures have not fired yet.
    #[cfg(test)]
    pub(crate) fn injected_write_failures_left(&self) -> u32 {
        self.fail_writes.load(Ordering::SeqCst)
    }

    /// Writes `batch` to the tree atomically, unless an injected failure is due.
    fn write_batch(&self, batch: sled::Batch) -> sled::Result<()> {
        let inject = self
            .fail_writes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if inject {
            return Err(sled::Error::Io(io::Error::other("injected write failure")));
        }
        self.tree.apply_batch(batch)
    }

    /// Suspends deferred writes until the guard drops. Takes the locked state as proof that
    /// the caller holds the write lock: an apply or the ticker, which check under the lock,
    /// then never write after this returns.
    fn suspend_writes(&self, _locked: &mut SmInner) -> WritesSuspended<'_> {
        self.writes_suspended.fetch_add(1, Ordering::SeqCst);
        WritesSuspended(self)
    }

    /// Makes the next snapshot build call `hook` when its scan is about to start (writes
    /// suspended, lock released), so a test can act while the scan is in progress.
    #[cfg(test)]
    pub(crate) fn on_next_scan(&self, hook: impl FnOnce() + Send + 'static) {
        if let Ok(mut h) = self.scan_hook.lock() {
            *h = Some(Box::new(hook));
        }
    }

    #[cfg(test)]
    fn run_scan_hook(&self) {
        let hook = self.scan_hook.lock().ok().and_then(|mut h| h.take());
        if let Some(hook) = hook {
            hook();
        }
    }

    /// The write lock, timed as held `by` (see `stats`).
    fn write(&self, by: Holder) -> WriteGuard<'_> {
        let guard = self
            .inner
            .write()
            .unwrap_or_else(|p| panic!("state machine lock poisoned: {p}"));
        WriteGuard::new(guard, by, &self.stats)
    }
}

/// Writes deferred state once it is due when applies have stopped; ends with the state machine.
async fn run_write_ticker(shared: Weak<SmShared>) {
    let mut tick = tokio::time::interval(WRITE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut inner = shared.write(Holder::Ticker);
        if inner.failed.is_some() {
            // Stopped (and logged) by whoever failed; retrying would only hide it.
            return;
        }
        if inner.write_due(&shared) && inner.write_unwritten(&shared).is_err() {
            // Logged by `SmInner::fail`; the next apply hands the error to openraft.
            return;
        }
    }
}

/// openraft's handle on the state machine; clones share the same state.
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<SmShared>,
    db: sled::Db,
    dir: PathBuf,
}

fn decode_meta<T: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    key: &[u8],
) -> io::Result<Option<T>> {
    match tree.get(key).map_err(io_err)? {
        Some(v) => Ok(Some(bincode::deserialize(&v).map_err(io_err)?)),
        None => Ok(None),
    }
}

impl StateMachineStore {
    /// Opens the state machine over the `sm` tree of `db`; `dir` holds the snapshot file.
    pub fn open(db: &sled::Db, dir: &Path) -> io::Result<Self> {
        let tree = db.open_tree(TREE).map_err(io_err)?;
        let mvcc = Mvcc::open(tree.clone()).map_err(io_err)?;
        let last_applied = decode_meta::<Option<LogId>>(&tree, KEY_APPLIED)?.flatten();
        let membership =
            decode_meta::<StoredMembership>(&tree, KEY_MEMBERSHIP)?.unwrap_or_default();
        let hub = Arc::new(WatchHub::new(
            mvcc.current_revision(),
            mvcc.compact_revision(),
        ));
        let shared = Arc::new(SmShared {
            tree,
            log_durable: std::sync::OnceLock::new(),
            hub,
            fail_writes: AtomicU32::new(0),
            snapshot_gate: Arc::new(tokio::sync::Mutex::new(())),
            writes_suspended: AtomicUsize::new(0),
            cleanup_wake: Arc::new(tokio::sync::Notify::new()),
            stats: StatCells::default(),
            #[cfg(test)]
            scan_hook: std::sync::Mutex::new(None),
            #[cfg(test)]
            cleanup_paused: std::sync::atomic::AtomicBool::new(false),
            inner: RwLock::new(SmInner {
                mvcc,
                last_applied,
                membership,
                unwritten: Unwritten::default(),
                failed: None,
            }),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(run_write_ticker(Arc::downgrade(&shared)));
            // Starts by finishing a removal pass the last run left unfinished, if any.
            rt.spawn(cleanup::run_cleanup(Arc::downgrade(&shared)));
        }
        Ok(StateMachineStore {
            shared,
            db: db.clone(),
            dir: dir.to_path_buf(),
        })
    }

    /// Makes deferred writes wait for the Raft log: `durable` is the log's watermark (every
    /// entry at or below it is synced). Without it the store may, after a power loss, hold
    /// applied state newer than the log's synced tail. A second call is ignored.
    pub fn hold_writes_until_durable(&self, durable: Arc<AtomicU64>) {
        let _ = self.shared.log_durable.set(durable);
    }

    /// The state shared with readers.
    pub fn shared(&self) -> Arc<SmShared> {
        self.shared.clone()
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let inner = self.shared.read();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let entries: Vec<EntryResponder<TypeConfig>> = entries.try_collect().await?;
        let started = Instant::now();
        let count = entries.len();
        let mut replies = Vec::with_capacity(count);
        {
            let mut inner = self.shared.write(Holder::Apply);
            inner.check_running()?;
            let events = match inner.apply_group(&self.shared, entries, &mut replies) {
                Ok(events) => events,
                // Part of the group may be in memory and in the batch, with no applied id
                // covering it: none of it may reach the disk.
                Err(e) => return Err(inner.fail(e, "applying entries")),
            };
            // Still under the write lock: a watcher catching up under the read lock sees
            // either none of this group or all of it in history, never half.
            self.shared.hub.publish(&inner.mvcc, events);
            if inner.mvcc.compaction_pending() {
                self.shared.cleanup_wake.notify_one();
            }
            if let Some(l) = &inner.last_applied {
                tracing::debug!(
                    log_index = l.index,
                    revision = inner.mvcc.current_revision(),
                    count,
                    "applied"
                );
            }
        }
        let took = started.elapsed();
        let ms = took.as_millis();
        self.shared.stats.apply_took(took, ms > SLOW_APPLY_MS);
        if ms > SLOW_APPLY_MS {
            tracing::warn!(apply_ms = ms as u64, count, "slow apply");
        }
        for (r, response) in replies {
            r.send(response);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        self.install(meta, snapshot).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        self.current_snapshot().await
    }
}

fn empty_response(mvcc: &Mvcc) -> CommandResponse {
    CommandResponse {
        revision: mvcc.current_revision(),
        result: Ok(ResponseBody::Empty),
    }
}
