//! The Raft log and vote, persisted in sled.
//!
//! Keys in the `raft_log` tree are big-endian log indexes, so sled's order is log order.
//! `raft_meta` holds the vote, the committed log id and the last purged log id.
//!
//! Group commit: `append` inserts a batch and hands its completion callback to one flusher
//! task; the flusher drains every callback queued so far, calls `flush_async` once and then
//! completes them all. Concurrent appends thus share one flush instead of paying one each.
//! The vote is flushed before `save_vote` returns (a vote must never be forgotten).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::time::Instant;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::mpsc;

use super::{io_err, Entry, LogId, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
/// An fsync slower than this is logged as a warning with its duration.
const SLOW_FLUSH_MS: u128 = 100;

fn encode<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    bincode::serialize(v).map_err(io_err)
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> io::Result<T> {
    bincode::deserialize(b).map_err(io_err)
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// Reads log entries; cheap to clone (sled trees are reference-counted handles).
#[derive(Clone)]
pub struct SledLogReader {
    log: sled::Tree,
    meta: sled::Tree,
}

/// The Raft log store on sled.
pub struct SledLogStore {
    db: sled::Db,
    reader: SledLogReader,
    flush_tx: mpsc::UnboundedSender<IOFlushed<TypeConfig>>,
}

impl SledLogStore {
    /// Opens the log trees in `db` and starts the group-commit flusher task.
    /// Must be called inside a tokio runtime.
    pub fn open(db: &sled::Db) -> io::Result<Self> {
        let log = db.open_tree("raft_log").map_err(io_err)?;
        let meta = db.open_tree("raft_meta").map_err(io_err)?;
        let (flush_tx, flush_rx) = mpsc::unbounded_channel();
        tokio::spawn(run_flusher(db.clone(), flush_rx));
        Ok(SledLogStore {
            db: db.clone(),
            reader: SledLogReader { log, meta },
            flush_tx,
        })
    }

    fn meta_get<T: DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        self.reader.meta_get(key)
    }

    fn meta_put<T: Serialize>(&self, key: &[u8], v: &T) -> io::Result<()> {
        self.reader.meta.insert(key, encode(v)?).map_err(io_err)?;
        Ok(())
    }

    async fn flush(&self) -> io::Result<()> {
        flush_timed(&self.db).await
    }
}

async fn flush_timed(db: &sled::Db) -> io::Result<()> {
    let started = Instant::now();
    db.flush_async().await.map_err(io_err)?;
    let ms = started.elapsed().as_millis();
    if ms > SLOW_FLUSH_MS {
        tracing::warn!(flush_ms = ms as u64, "slow sled flush");
    }
    Ok(())
}

/// Completes queued append callbacks, one flush per drained group.
async fn run_flusher(db: sled::Db, mut rx: mpsc::UnboundedReceiver<IOFlushed<TypeConfig>>) {
    let mut group = Vec::new();
    while let Some(first) = rx.recv().await {
        group.push(first);
        while let Ok(more) = rx.try_recv() {
            group.push(more);
        }
        let result = flush_timed(&db).await;
        for cb in group.drain(..) {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            cb.io_completed(r);
        }
    }
}

impl SledLogReader {
    fn meta_get<T: DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.meta.get(key).map_err(io_err)? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    fn last_entry_log_id(&self) -> io::Result<Option<LogId>> {
        match self.log.last().map_err(io_err)? {
            Some((_, v)) => {
                let e: Entry = decode(&v)?;
                Ok(Some(e.log_id))
            }
            None => Ok(None),
        }
    }
}

fn to_sled_bounds<RB: RangeBounds<u64>>(range: &RB) -> (Bound<[u8; 8]>, Bound<[u8; 8]>) {
    let start = match range.start_bound() {
        Bound::Included(i) => Bound::Included(index_key(*i)),
        Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
        Bound::Unbounded => Bound::Unbounded,
    };
    let end = match range.end_bound() {
        Bound::Included(i) => Bound::Included(index_key(*i)),
        Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
        Bound::Unbounded => Bound::Unbounded,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for SledLogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let mut out = Vec::new();
        for item in self.log.range(to_sled_bounds(&range)) {
            let (_, v) = item.map_err(io_err)?;
            out.push(decode(&v)?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.meta_get(KEY_VOTE)
    }
}

impl RaftLogReader<TypeConfig> for SledLogStore {
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

impl RaftLogStorage<TypeConfig> for SledLogStore {
    type LogReader = SledLogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogId> = self.meta_get(KEY_LAST_PURGED)?;
        let last = self.reader.last_entry_log_id()?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.meta_put(KEY_VOTE, vote)?;
        self.flush().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not flushed: losing it only means re-applying from the last applied entry, which the
        // state machine persists on its own.
        self.meta_put(KEY_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.meta_get::<Option<LogId>>(KEY_COMMITTED)?.flatten())
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
        let mut batch = sled::Batch::default();
        for e in entries {
            batch.insert(&index_key(e.log_id.index), encode(&e)?);
        }
        self.reader.log.apply_batch(batch).map_err(io_err)?;
        if let Err(mpsc::error::SendError(cb)) = self.flush_tx.send(callback) {
            // The flusher is gone (runtime shutting down): flush inline.
            let r = self.flush().await;
            cb.io_completed(r);
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map(|l| l.index + 1).unwrap_or(0);
        let mut batch = sled::Batch::default();
        for item in self.reader.log.range(index_key(from)..) {
            let (k, _) = item.map_err(io_err)?;
            batch.remove(k);
        }
        self.reader.log.apply_batch(batch).map_err(io_err)?;
        self.flush().await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // Record the purge point first: a crash between the two steps leaves extra entries,
        // never a gap that get_log_state would misreport.
        self.meta_put(KEY_LAST_PURGED, &log_id)?;
        let mut batch = sled::Batch::default();
        for item in self.reader.log.range(..=index_key(log_id.index)) {
            let (k, _) = item.map_err(io_err)?;
            batch.remove(k);
        }
        self.reader.log.apply_batch(batch).map_err(io_err)?;
        self.flush().await
    }
}
