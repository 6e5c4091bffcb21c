//! The Raft log and vote in our own append-only segment files.
//!
//! [`FileLogStore`] owns a directory (`<data_dir>/raft-log`) holding:
//! - segment files `{first_index:020}.seg`, each a run of consecutive log records starting at the
//!   index in its name. Appends go to the last ("current") segment; once it has grown past
//!   [`SEGMENT_BYTES`] the next append starts a new one.
//! - `vote` and `purged`: the bincode of the last saved vote and of the last purged log id, each
//!   replaced crash-atomically (write `*.tmp`, fsync, rename, fsync the directory).
//!
//! Layout: `record` (the record format), `sync` (the group-commit thread), `disk` (meta files,
//! segment listing, recovery at open), `files` (the operations that change files: append
//! placement, new segments, truncate, purge, vote), `tests`.
//!
//! Blocking I/O and the runtime: `save_vote`, `truncate_after`, `purge` and starting a segment
//! (all of which fsync, rename or delete) run on tokio's blocking pool and are awaited, so they
//! complete in openraft's order and before the call returns, as before. An append's positional
//! write stays inline (page cache; the fsync is the sync thread's), as do reads (`pread`).
//!
//! Record format (little endian):
//! `[u32 payload_len][u32 crc32(index bytes ++ payload)][u64 log index][payload = bincode(Entry)]`.
//!
//! Memory holds only where each live entry sits (a byte offset per entry, grouped by segment)
//! and an open `File` per segment; entries are read back with `pread` and decoded (crc checked)
//! on every read, so the log's size does not show up in RSS.
//!
//! Group commit: `append` encodes all its entries into one buffer, writes it with one positional
//! write at the end of the current segment, and hands the file and the completion callback to the
//! "raft-log-sync" thread. That thread takes everything queued so far, calls `fdatasync` once per
//! distinct file (normally one) and then completes every callback; appends that queue up while a
//! sync runs thus share the next one.
//!
//! Crash recovery ([`FileLogStore::open`]): segments are scanned in index order; every record's
//! crc is checked and its index must be exactly the previous one plus one (only the very first
//! record of the first segment may start anywhere). A short or corrupt record in the LAST segment
//! is a write torn by a crash: it was never acknowledged (its sync had not completed), so the file
//! is cut there and everything after it is dropped. A corrupt record anywhere else, or a gap
//! between segments, means acknowledged data is damaged: `open` fails with `InvalidData`.
//! Records at or below the saved purge point are skipped.
//!
//! The committed log id is kept in memory only: `read_committed` returns what `save_committed`
//! stored in this process, `None` after a restart (openraft 0.10 allows that: `None` means "not
//! stored"). Persisting it would add a write, and a sync to mean anything, to every commit; losing
//! it only means that after a restart the state machine starts from its own persisted state and
//! catches up once the leader re-announces the commit index.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::fs::{self, File};
use std::io;
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use super::{blocking, Entry, LogId, TypeConfig, Vote};

mod disk;
mod files;
mod record;
mod sync;

#[cfg(test)]
use disk::list_segments;
use disk::{read_meta, recover_segments};
use files::{encode_batch, LogFiles};
#[cfg(test)]
use record::encode_record;
use record::{parse_record, Parsed};
use sync::{run_sync_thread, sync_group, SyncJob, Watermark};

/// Size past which the current segment is closed and the next append starts a new one.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// `payload_len` + `crc` + `index`.
const HEADER_LEN: usize = 16;
const SEGMENT_EXT: &str = "seg";
const VOTE_FILE: &str = "vote";
const PURGED_FILE: &str = "purged";
/// An fdatasync slower than this is logged as a warning with its duration.
const SLOW_SYNC_MS: u128 = 100;

fn invalid_data(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn invalid_input(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// `io::Error` is not `Clone`; a group's one sync result is reported to every callback.
fn clone_err(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

fn poisoned() -> io::Error {
    io::Error::other("raft log state lock poisoned")
}

fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:020}.{SEGMENT_EXT}"))
}

/// Makes creations, renames and deletions of entries in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// One segment file and where its live entries are.
struct Segment {
    /// `{first_index:020}.seg`, where `first_index` is the index of the file's first record.
    path: PathBuf,
    file: Arc<File>,
    /// Index of `offsets[0]`; when `offsets` is empty, the index the next record would have.
    /// Grows past `first_index` as purged entries are dropped from memory.
    base: u64,
    /// Byte offset of each live entry's record.
    offsets: VecDeque<u64>,
    /// Bytes of complete records in the file; the next record goes here.
    len: u64,
}

impl Segment {
    fn next_index(&self) -> u64 {
        self.base + self.offsets.len() as u64
    }

    /// Byte range of the records for the live entries at positions `[a, b)` of `offsets`.
    fn span(&self, a: usize, b: usize) -> (u64, u64) {
        let end = self.offsets.get(b).copied().unwrap_or(self.len);
        (self.offsets[a], end)
    }
}

/// State shared between the store and its readers. Only the store mutates it.
struct State {
    /// In index order; the last one is the current segment.
    segments: VecDeque<Segment>,
    vote: Option<Vote>,
    purged: Option<LogId>,
    /// Log id of the last live entry.
    last_log_id: Option<LogId>,
}

impl State {
    fn first_live_index(&self) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| !s.offsets.is_empty())
            .map(|s| s.base)
    }

    fn has_live(&self) -> bool {
        self.segments.iter().any(|s| !s.offsets.is_empty())
    }

    /// Reads the live entries with indexes in `[start, end)`; absent ones are skipped (they can
    /// only be at the ends, as live entries are consecutive).
    fn read_range(&self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        for seg in &self.segments {
            let lo = start.max(seg.base);
            let hi = end.min(seg.next_index());
            if lo >= hi {
                continue;
            }
            let a = (lo - seg.base) as usize;
            let b = (hi - seg.base) as usize;
            let (from, to) = seg.span(a, b);
            // One pread for the whole run of records in this segment.
            let mut buf = vec![0u8; (to - from) as usize];
            seg.file.read_exact_at(&mut buf, from)?;
            let mut pos = 0usize;
            for index in lo..hi {
                match parse_record(&buf[pos..]) {
                    Parsed::Record {
                        index: got,
                        payload,
                        len,
                    } if got == index => {
                        out.push(bincode::deserialize(payload).map_err(|e| {
                            invalid_data(format!(
                                "{}: undecodable entry {index} at offset {}: {e}",
                                seg.path.display(),
                                from + pos as u64
                            ))
                        })?);
                        pos += len;
                    }
                    other => {
                        return Err(invalid_data(format!(
                            "{}: bad record for entry {index} at offset {}: {other:?}",
                            seg.path.display(),
                            from + pos as u64
                        )))
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Reads log entries and the vote; cheap to clone (shares the store's state).
#[derive(Clone)]
pub struct FileLogReader {
    state: Arc<RwLock<State>>,
}

impl FileLogReader {
    fn read(&self) -> io::Result<RwLockReadGuard<'_, State>> {
        self.state.read().map_err(|_| poisoned())
    }

    fn write(&self) -> io::Result<RwLockWriteGuard<'_, State>> {
        self.state.write().map_err(|_| poisoned())
    }
}

/// The Raft log store on segment files; see the module doc.
pub struct FileLogStore {
    files: LogFiles,
    /// Not persisted; see the module doc.
    committed: Option<LogId>,
    sync_tx: mpsc::Sender<SyncJob>,
}

impl FileLogStore {
    /// Opens (creating if missing) the log in `dir`, recovers it (see the module doc) and starts
    /// the "raft-log-sync" thread. Needs no async runtime.
    pub fn open(dir: &Path) -> io::Result<Self> {
        Self::open_with_segment_bytes(dir, SEGMENT_BYTES)
    }

    /// [`Self::open`] with another rotation threshold (tests use tiny segments).
    pub(crate) fn open_with_segment_bytes(dir: &Path, segment_bytes: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let vote: Option<Vote> = read_meta(dir, VOTE_FILE)?;
        let purged: Option<LogId> = read_meta(dir, PURGED_FILE)?;
        let segments = recover_segments(dir, purged.map(|p| p.index))?;
        let mut state = State {
            segments,
            vote,
            purged,
            last_log_id: None,
        };
        if let Some(last) = state.segments.back().map(|s| s.next_index()) {
            if state.has_live() {
                state.last_log_id = state.read_range(last - 1, last)?.pop().map(|e| e.log_id);
            }
        }

        // Whatever recovery found on disk is durable (recovery syncs what it cuts).
        let durable = Watermark::new(state.last_log_id.map_or(0, |l| l.index));
        let (sync_tx, sync_rx) = mpsc::channel();
        let durable_in_thread = durable.clone();
        std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || run_sync_thread(sync_rx, &durable_in_thread))?;
        Ok(FileLogStore {
            files: LogFiles {
                dir: dir.to_path_buf(),
                segment_bytes,
                reader: FileLogReader {
                    state: Arc::new(RwLock::new(state)),
                },
                durable,
            },
            committed: None,
            sync_tx,
        })
    }

    /// A watermark: every entry in the log with an index at or below it has been synced. The
    /// state machine holds its deferred writes until the watermark passes what they applied, so
    /// even after a power loss its store is never ahead of this log.
    pub fn durable_index(&self) -> Arc<AtomicU64> {
        self.files.durable.durable()
    }

    /// Queues `file`'s sync and `callback` for the sync thread.
    fn queue_sync(&self, file: Arc<File>, last_index: u64, callback: IOFlushed<TypeConfig>) {
        let job = SyncJob {
            file,
            last_index,
            generation: self.files.durable.generation(),
            callback,
        };
        if let Err(mpsc::SendError(job)) = self.sync_tx.send(job) {
            // The sync thread is gone: sync inline.
            sync_group(vec![job], &self.files.durable);
        }
    }

    /// Runs `op` on a clone of the files on tokio's blocking pool (it fsyncs, renames or
    /// deletes) and waits for it, so log I/O keeps openraft's order.
    async fn off_runtime<T: Send + 'static>(
        &self,
        op: impl FnOnce(&LogFiles) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let files = self.files.clone();
        blocking(move || op(&files)).await
    }
}

/// `[start, end)` of a range of log indexes.
fn bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(i) => i.saturating_add(1),
        Bound::Excluded(i) => *i,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for FileLogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = bounds(&range);
        // The read lock is held through the preads so a concurrent truncate cannot change
        // the bytes under a read (the read is atomic, as openraft requires).
        self.read()?.read_range(start, end)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.read()?.vote)
    }
}

impl RaftLogReader<TypeConfig> for FileLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        self.files.reader.try_get_log_entries(range).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.files.reader.read_vote().await
    }
}

impl RaftLogStorage<TypeConfig> for FileLogStore {
    type LogReader = FileLogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let st = self.files.reader.read()?;
        Ok(LogState {
            last_purged_log_id: st.purged,
            last_log_id: st.last_log_id.or(st.purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.files.reader.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let vote = *vote;
        self.off_runtime(move |files| files.save_vote(&vote)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // In memory only; see the module doc.
        self.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(enc) = encode_batch(&entries)? else {
            callback.io_completed(Ok(()));
            return Ok(());
        };
        let (file, at) = match self.files.append_point(enc.first)? {
            Some(point) => point,
            // Once per segment: an fsync of the full one, a file creation and a directory sync.
            None => {
                let first = enc.first;
                self.off_runtime(move |files| files.start_segment(first))
                    .await?
            }
        };
        // Inline: a positional write into the page cache, on the hottest path (a hop to another
        // thread per append would cost more than it saves). The fsync is the sync thread's.
        let last_index = self.files.write_appended(&enc, &file, at)?;
        self.queue_sync(file, last_index, callback);
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.off_runtime(move |files| files.truncate(last_log_id))
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.off_runtime(move |files| files.purge(log_id)).await
    }
}

#[cfg(test)]
mod tests;
