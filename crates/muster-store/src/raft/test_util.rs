//! Test harness for the state machine: a store over a temp dir, entries that put one key each,
//! and apply through an entry stream the way openraft's state-machine worker calls it.
#![allow(clippy::unwrap_used)]

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use muster_types::{Command, KeyRange, KeyValue, LogEntry, PutRequest, RangeRequest};
use openraft::storage::RaftStateMachine;
use openraft::vote::RaftLeaderIdExt;
use openraft::EntryPayload;
use tempfile::TempDir;

use super::state_machine::{SmShared, StateMachineStore};
use super::{Entry, LogId, TypeConfig};

/// Bound on every wait for a background task.
pub(super) const DEADLINE: Duration = Duration::from_secs(30);

/// A state machine over its own sled db in a temp dir.
pub(super) struct Sm {
    pub dir: TempDir,
    pub db: sled::Db,
    pub sm: StateMachineStore,
}

impl Sm {
    pub fn new() -> Sm {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .unwrap();
        let sm = StateMachineStore::open(&db, dir.path()).unwrap();
        Sm { dir, db, sm }
    }

    /// Drops the store (and with it every unwritten applied group, as a crash would) and opens
    /// a new one over the same db and dir. Call it with nothing unwritten or after a failed
    /// write: the old store's ticker could otherwise write once more after the new one opened.
    pub fn reopen(&mut self) {
        self.sm = StateMachineStore::open(&self.db, self.dir.path()).unwrap();
    }

    pub fn shared(&self) -> Arc<SmShared> {
        self.sm.shared()
    }

    /// Applies `entries` as one call of `apply`.
    pub async fn apply(&mut self, entries: Vec<Entry>) -> io::Result<()> {
        apply(&mut self.sm, entries).await
    }

    pub async fn last_applied(&mut self) -> Option<LogId> {
        self.sm.applied_state().await.unwrap().0
    }

    /// The current value of `key`, from the readers' view.
    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        let req = RangeRequest {
            range: KeyRange::single(key),
            ..Default::default()
        };
        let shared = self.shared();
        let inner = shared.read();
        inner.mvcc.range(&req).unwrap().unwrap().kvs.pop()
    }

    /// Every live key-value, in key order.
    pub fn all(&self) -> Vec<KeyValue> {
        let req = RangeRequest {
            range: KeyRange::new(vec![0], vec![0]),
            ..Default::default()
        };
        let shared = self.shared();
        let inner = shared.read();
        inner.mvcc.range(&req).unwrap().unwrap().kvs
    }

    pub fn revision(&self) -> i64 {
        self.shared().read().mvcc.current_revision()
    }
}

pub(super) async fn apply(sm: &mut StateMachineStore, entries: Vec<Entry>) -> io::Result<()> {
    let stream = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
    sm.apply(stream).await
}

pub(super) fn log_id(index: u64) -> LogId {
    LogId::new(
        openraft::alias::LeaderIdOf::<TypeConfig>::new_committed(1, 1),
        index,
    )
}

/// The key entry `index` puts.
pub(super) fn key(index: u64) -> Vec<u8> {
    format!("k{index:06}").into_bytes()
}

/// An entry putting `key(index)` = `value`.
pub(super) fn put_entry(index: u64, value: Vec<u8>) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(LogEntry {
            time_ms: 1_000,
            cmd: Command::Put(PutRequest {
                key: key(index),
                value,
                ..Default::default()
            }),
        }),
    }
}

/// An entry with a small value: applying it alone does not make the deferred write due.
pub(super) fn small(index: u64) -> Entry {
    put_entry(index, format!("v{index}").into_bytes())
}

/// An entry whose value alone reaches the byte bound: applying it writes the batch at once.
pub(super) fn big(index: u64) -> Entry {
    put_entry(index, vec![b'x'; super::state_machine::WRITE_AT_BYTES])
}

/// Polls `pred` until it holds; panics after [`DEADLINE`] with `what`.
pub(super) async fn wait_until(what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
