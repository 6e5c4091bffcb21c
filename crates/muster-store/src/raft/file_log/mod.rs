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
//! segment listing, recovery at open), `tests`.
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
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use super::{Entry, LogId, TypeConfig, Vote};

mod disk;
mod record;
mod sync;

#[cfg(test)]
use disk::list_segments;
use disk::{read_meta, recover_segments, write_meta};
use record::{encode_record, parse_record, Parsed};
use sync::{run_sync_thread, sync_group, SyncJob};

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
    dir: PathBuf,
    segment_bytes: u64,
    reader: FileLogReader,
    /// Not persisted; see the module doc.
    committed: Option<LogId>,
    sync_tx: mpsc::Sender<SyncJob>,
    /// Every live entry with an index at or below this is durable (see [`Self::durable_index`]).
    durable: Arc<AtomicU64>,
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
        let durable = Arc::new(AtomicU64::new(state.last_log_id.map_or(0, |l| l.index)));
        let (sync_tx, sync_rx) = mpsc::channel();
        let durable_in_thread = durable.clone();
        std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || run_sync_thread(sync_rx, &durable_in_thread))?;
        Ok(FileLogStore {
            dir: dir.to_path_buf(),
            segment_bytes,
            reader: FileLogReader {
                state: Arc::new(RwLock::new(state)),
            },
            committed: None,
            sync_tx,
            durable,
        })
    }

    /// A watermark: every entry in the log with an index at or below it has been synced. The
    /// state machine holds its deferred writes until the watermark passes what they applied, so
    /// even after a power loss its store is never ahead of this log.
    pub fn durable_index(&self) -> Arc<AtomicU64> {
        self.durable.clone()
    }

    /// Creates the segment file for `first_index` and makes its name durable.
    fn create_segment(&self, first_index: u64) -> io::Result<Segment> {
        let path = segment_path(&self.dir, first_index);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        sync_dir(&self.dir)?;
        Ok(Segment {
            path,
            file: Arc::new(file),
            base: first_index,
            offsets: VecDeque::new(),
            len: 0,
        })
    }

    /// Makes the current segment the right place for a record with index `first`, and returns
    /// its file and the offset to write at.
    fn prepare_append(&self, first: u64) -> io::Result<(Arc<File>, u64)> {
        let (contiguous, live_range, current) = {
            let st = self.reader.read()?;
            if let Some(p) = st.purged.filter(|p| first <= p.index) {
                return Err(invalid_input(format!(
                    "append at index {first} is at or below the purge point {p}"
                )));
            }
            let cur = st.segments.back();
            let contiguous = cur.map(|s| s.next_index()) == Some(first);
            match cur {
                // The hot path: the current segment continues.
                Some(s) if contiguous && s.len < self.segment_bytes => {
                    return Ok((s.file.clone(), s.len))
                }
                _ => {}
            }
            (
                contiguous,
                st.first_live_index().zip(cur.map(|s| s.next_index())),
                cur.map(|s| s.file.clone()),
            )
        };
        if contiguous {
            // The current segment is full. It is synced here, not by the sync thread, so a
            // segment is durable once it stops being current and recovery may treat damage in
            // it as real corruption.
            if let Some(f) = current {
                f.sync_data()?;
            }
        } else {
            if let Some((lo, hi)) = live_range {
                return Err(invalid_input(format!(
                    "append at index {first} does not follow the log [{lo}, {hi})"
                )));
            }
            // No live entries (fresh log, or purged/truncated past everything, e.g. after a
            // snapshot install): what the segments hold is dead, so start over at `first`.
            // Delete before creating so a crash never leaves a gap between segment files.
            let old: Vec<PathBuf> = {
                let mut st = self.reader.write()?;
                st.segments.drain(..).map(|s| s.path).collect()
            };
            if !old.is_empty() {
                for p in &old {
                    fs::remove_file(p)?;
                }
                sync_dir(&self.dir)?;
            }
        }
        let seg = self.create_segment(first)?;
        let file = seg.file.clone();
        self.reader.write()?.segments.push_back(seg);
        Ok((file, 0))
    }

    /// Queues `file`'s sync and `callback` for the sync thread.
    fn queue_sync(&self, file: Arc<File>, last_index: u64, callback: IOFlushed<TypeConfig>) {
        let job = SyncJob {
            file,
            last_index,
            callback,
        };
        if let Err(mpsc::SendError(job)) = self.sync_tx.send(job) {
            // The sync thread is gone: sync inline.
            sync_group(vec![job], &self.durable);
        }
    }

    fn append_sync(&self, entries: Vec<Entry>) -> io::Result<Option<(Arc<File>, u64)>> {
        let Some(first) = entries.first().map(|e| e.log_id.index) else {
            return Ok(None);
        };
        let mut buf = Vec::new();
        let mut rel = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            if e.log_id.index != first + i as u64 {
                return Err(invalid_input(format!(
                    "append batch is not consecutive: index {} after {}",
                    e.log_id.index,
                    first + i as u64 - 1
                )));
            }
            rel.push(buf.len() as u64);
            encode_record(&mut buf, e)?;
        }
        let (file, at) = self.prepare_append(first)?;
        file.write_all_at(&buf, at)?;
        let mut st = self.reader.write()?;
        let seg = st
            .segments
            .back_mut()
            .ok_or_else(|| io::Error::other("no current segment"))?;
        seg.offsets.extend(rel.iter().map(|r| at + r));
        seg.len = at + buf.len() as u64;
        st.last_log_id = entries.last().map(|e| e.log_id);
        Ok(Some((file, first + entries.len() as u64 - 1)))
    }

    fn truncate_sync(&self, last: Option<LogId>) -> io::Result<()> {
        let keep_until = last.map_or(0, |l| l.index + 1);
        // Entries appended later at the dropped indexes are not durable until their own sync.
        self.durable
            .fetch_min(keep_until.saturating_sub(1), Ordering::SeqCst);
        let (deleted, truncated) = {
            let mut st = self.reader.write()?;
            let (Some(first_live), Some(next)) = (
                st.first_live_index(),
                st.segments.back().map(|s| s.next_index()),
            ) else {
                return Ok(());
            };
            if keep_until >= next {
                return Ok(());
            }
            // Purged records stay on disk (recovery skips them); cut at the first live one.
            let drop_from = keep_until.max(first_live);
            let Some(pos) = st
                .segments
                .iter()
                .position(|s| s.base <= drop_from && drop_from < s.next_index())
            else {
                return Err(io::Error::other(format!(
                    "no segment holds live entry {drop_from}"
                )));
            };
            let deleted: Vec<PathBuf> = st.segments.drain(pos + 1..).map(|s| s.path).collect();
            let seg = &mut st.segments[pos];
            let keep = (drop_from - seg.base) as usize;
            seg.len = seg.offsets[keep];
            seg.offsets.truncate(keep);
            let truncated = (seg.file.clone(), seg.len);
            st.last_log_id = if drop_from > first_live { last } else { None };
            (deleted, truncated)
        };
        // From the end backward, so a crash part way leaves a log without holes: later
        // segments go (durably) before the surviving one is cut.
        for p in deleted.iter().rev() {
            fs::remove_file(p)?;
        }
        if !deleted.is_empty() {
            sync_dir(&self.dir)?;
        }
        let (file, len) = truncated;
        file.set_len(len)?;
        file.sync_data()
    }

    fn purge_sync(&self, log_id: LogId) -> io::Result<()> {
        if self
            .reader
            .read()?
            .purged
            .is_some_and(|p| p.index >= log_id.index)
        {
            return Ok(());
        }
        // The purge point is durable before any entry goes, so recovery never sees a log that
        // starts later than the purge point says.
        write_meta(&self.dir, PURGED_FILE, &log_id)?;
        let deleted: Vec<PathBuf> = {
            let mut st = self.reader.write()?;
            st.purged = Some(log_id);
            for seg in st.segments.iter_mut() {
                while seg.base <= log_id.index && seg.offsets.pop_front().is_some() {
                    seg.base += 1;
                }
            }
            if st.last_log_id.is_some_and(|l| l.index <= log_id.index) {
                st.last_log_id = None;
            }
            let mut deleted = Vec::new();
            // The current segment stays: appends continue in it.
            while st.segments.len() > 1
                && st
                    .segments
                    .front()
                    .is_some_and(|s| s.next_index() <= log_id.index + 1)
            {
                if let Some(s) = st.segments.pop_front() {
                    deleted.push(s.path);
                }
            }
            deleted
        };
        // Not synced: a deleted segment that comes back after a crash only holds purged entries,
        // which recovery skips.
        for p in deleted {
            fs::remove_file(p)?;
        }
        Ok(())
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
        self.reader.try_get_log_entries(range).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.reader.read_vote().await
    }
}

impl RaftLogStorage<TypeConfig> for FileLogStore {
    type LogReader = FileLogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let st = self.reader.read()?;
        Ok(LogState {
            last_purged_log_id: st.purged,
            last_log_id: st.last_log_id.or(st.purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        write_meta(&self.dir, VOTE_FILE, vote)?;
        self.reader.write()?.vote = Some(*vote);
        Ok(())
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
        match self.append_sync(entries.into_iter().collect())? {
            Some((file, last_index)) => self.queue_sync(file, last_index, callback),
            None => callback.io_completed(Ok(())),
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.truncate_sync(last_log_id)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.purge_sync(log_id)
    }
}

#[cfg(test)]
mod tests;
