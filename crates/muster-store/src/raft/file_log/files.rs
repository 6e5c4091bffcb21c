//! The operations that change the log's files: placing an append (and starting segments),
//! truncating, purging and saving the vote. All are synchronous; [`LogFiles`] is cheap to clone
//! so the store's async methods can run the ones that fsync, rename or delete on tokio's
//! blocking pool. Each call still completes before the async method returns, so the order of
//! log I/O is exactly the order openraft issued it in.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use super::disk::write_meta;
use super::record::encode_record;
use super::{
    invalid_input, segment_path, sync_dir, FileLogReader, Segment, Watermark, PURGED_FILE,
    VOTE_FILE,
};
use crate::raft::{Entry, LogId, Vote};

/// The log directory and the in-memory index of its segments; clones share the state.
#[derive(Clone)]
pub(super) struct LogFiles {
    pub(super) dir: PathBuf,
    pub(super) segment_bytes: u64,
    pub(super) reader: FileLogReader,
    /// Every live entry with an index at or below this is durable.
    pub(super) durable: Watermark,
}

/// An append batch encoded and ready to be written.
pub(super) struct Encoded {
    pub(super) first: u64,
    pub(super) last: Option<LogId>,
    pub(super) buf: Vec<u8>,
    /// Offset of each entry's record in `buf`.
    pub(super) rel: Vec<u64>,
}

/// Encodes `entries` (which must be consecutive) into one buffer; `None` when empty.
pub(super) fn encode_batch(entries: &[Entry]) -> io::Result<Option<Encoded>> {
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
    Ok(Some(Encoded {
        first,
        last: entries.last().map(|e| e.log_id),
        buf,
        rel,
    }))
}

impl LogFiles {
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

    /// The hot path of an append at index `first`: the current segment's file and end offset
    /// when it continues at `first` and has room; `None` when a segment must be started
    /// ([`Self::start_segment`]). Touches no file.
    pub(super) fn append_point(&self, first: u64) -> io::Result<Option<(Arc<File>, u64)>> {
        let st = self.reader.read()?;
        if let Some(p) = st.purged.filter(|p| first <= p.index) {
            return Err(invalid_input(format!(
                "append at index {first} is at or below the purge point {p}"
            )));
        }
        Ok(st
            .segments
            .back()
            .filter(|s| s.next_index() == first && s.len < self.segment_bytes)
            .map(|s| (s.file.clone(), s.len)))
    }

    /// Starts the segment a record with index `first` goes to (when [`Self::append_point`]
    /// found no room) and returns its file and the offset to write at (0). Syncs files and the
    /// directory: call it off the async runtime.
    pub(super) fn start_segment(&self, first: u64) -> io::Result<(Arc<File>, u64)> {
        let (contiguous, live_range, current) = {
            let st = self.reader.read()?;
            let cur = st.segments.back();
            (
                cur.map(|s| s.next_index()) == Some(first),
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

    /// Writes `enc` at `at` in `file` (the current segment) and indexes its entries; returns the
    /// index of the last one. Not synced: the sync thread does that.
    pub(super) fn write_appended(&self, enc: &Encoded, file: &File, at: u64) -> io::Result<u64> {
        file.write_all_at(&enc.buf, at)?;
        let mut st = self.reader.write()?;
        let seg = st
            .segments
            .back_mut()
            .ok_or_else(|| io::Error::other("no current segment"))?;
        seg.offsets.extend(enc.rel.iter().map(|r| at + r));
        seg.len = at + enc.buf.len() as u64;
        st.last_log_id = enc.last;
        Ok(enc.first + enc.rel.len() as u64 - 1)
    }

    /// Drops every entry after `last` (all of them when `None`), durably.
    pub(super) fn truncate(&self, last: Option<LogId>) -> io::Result<()> {
        let keep_until = last.map_or(0, |l| l.index + 1);
        // Entries appended later at the dropped indexes are not durable until their own sync
        // (and syncs queued before this one no longer count).
        self.durable.truncated(keep_until.saturating_sub(1));
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

    /// Drops every entry at or below `log_id`: the purge point is saved durably first.
    pub(super) fn purge(&self, log_id: LogId) -> io::Result<()> {
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

    /// Saves `vote` durably, then makes it the one readers see.
    pub(super) fn save_vote(&self, vote: &Vote) -> io::Result<()> {
        write_meta(&self.dir, VOTE_FILE, vote)?;
        self.reader.write()?.vote = Some(*vote);
        Ok(())
    }
}
