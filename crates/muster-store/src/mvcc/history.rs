//! History records: every write (put or tombstone) is stored under its revision. This module owns
//! writing and removing them through the caller's batch, loading one for an old-revision read,
//! and scanning them for watch catch-up ([`Mvcc::events_since`]).
//!
//! Writes sit in the caller's unapplied `sled::Batch`, invisible in the tree, until the caller
//! writes the batch — the state machine defers that across many applied groups (see its module
//! doc). `pending` keeps every record written since the caller last wrote its batch, so loads
//! and scans see the tree and the pending records together: the tree holds every record older
//! than the oldest pending one, so a scan is the tree's range followed by pending's.

use std::collections::BTreeMap;

use muster_types::{ApplyError, Event, EventKind, KeyRange, Revision};

use super::codec::{
    decode_history, decode_history_key, encode_history, history_key, HistoryRecord, HISTORY_END,
};
use super::Mvcc;
use crate::error::StoreError;

pub(crate) struct History {
    tree: sled::Tree,
    /// Records written into a batch the caller may not have applied yet.
    pending: BTreeMap<Revision, HistoryRecord>,
}

impl History {
    pub fn new(tree: sled::Tree) -> Self {
        History {
            tree,
            pending: BTreeMap::new(),
        }
    }

    /// Forgets the pending records: the caller has written the batch holding them to the tree.
    pub fn persisted(&mut self) {
        self.pending.clear();
    }

    #[cfg(test)]
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Writes the record at `rev`; returns the bytes it takes (key and value).
    pub fn write(
        &mut self,
        batch: &mut sled::Batch,
        rev: Revision,
        rec: HistoryRecord,
    ) -> Result<u32, StoreError> {
        let value = encode_history(&rec)?;
        let bytes = record_bytes(value.len());
        batch.insert(&history_key(rev), value);
        self.pending.insert(rev, rec);
        Ok(bytes)
    }

    pub fn remove(&mut self, batch: &mut sled::Batch, rev: Revision) {
        batch.remove(&history_key(rev));
        self.pending.remove(&rev);
    }

    /// The record at `rev`, which the index says exists.
    pub fn load(&self, rev: Revision) -> Result<HistoryRecord, StoreError> {
        if let Some(rec) = self.pending.get(&rev) {
            return Ok(rec.clone());
        }
        match self.tree.get(history_key(rev))? {
            Some(bytes) => decode_history(&bytes),
            None => Err(StoreError::Corrupt {
                what: format!("history record {rev:?} is indexed but missing"),
            }),
        }
    }

    /// Every record at or after `from`, in revision order: the tree's, then the pending ones.
    /// (Records compaction made garbage stay in the tree until the removal pass reaches them,
    /// see `compact`; all are below the compact revision, where only `scan_all` starts.)
    pub fn scan_from(
        &self,
        from: Revision,
    ) -> impl Iterator<Item = Result<(Revision, HistoryRecord), StoreError>> + '_ {
        let stored = self
            .tree
            .range(history_key(from).to_vec()..HISTORY_END.to_vec())
            .map(|item| {
                let (key, value) = item?;
                Ok((decode_history_key(&key)?, decode_history(&value)?))
            });
        let pending = self
            .pending
            .range(from..)
            .map(|(rev, rec)| Ok((*rev, rec.clone())));
        stored.chain(pending)
    }

    /// Every stored record with the bytes it takes, in revision order (for rebuilding the
    /// index on open, when nothing is pending).
    pub fn scan_all(
        &self,
    ) -> impl Iterator<Item = Result<(Revision, HistoryRecord, u32), StoreError>> + '_ {
        self.tree
            .range(history_key(Revision { main: 0, sub: 0 }).to_vec()..HISTORY_END.to_vec())
            .map(|item| {
                let (key, value) = item?;
                Ok((
                    decode_history_key(&key)?,
                    decode_history(&value)?,
                    record_bytes(value.len()),
                ))
            })
    }
}

/// What a history record with a `value_len`-byte value takes: its key and value. Counted for
/// the space quota; sled's own overhead per record is left out (it varies with its pages).
fn record_bytes(value_len: usize) -> u32 {
    u32::try_from(history_key(Revision { main: 0, sub: 0 }).len() + value_len).unwrap_or(u32::MAX)
}

impl Mvcc {
    /// History for watch catch-up: the events with revision ≥ `from` on keys in `range`, in
    /// revision order. Stops once `limit` events are collected (0 = no limit), but never inside
    /// a revision: the events of the last revision are all included, so the result may exceed
    /// `limit`. `from ≤ 0` means from the oldest revision still readable.
    ///
    /// Each event carries its `prev_kv` when the key's previous change is still in the history
    /// and was a put (for an event at exactly the compact revision, it may have been compacted).
    ///
    /// `Err(Compacted)` when `from` is below the compact revision (as in etcd, a watch may start
    /// at the compact revision itself: compaction keeps every change made at it).
    pub fn events_since(
        &self,
        from: i64,
        range: &KeyRange,
        limit: usize,
    ) -> Result<Result<Vec<Event>, ApplyError>, StoreError> {
        if from > 0 && from < self.compact_revision {
            return Ok(Err(ApplyError::Compacted {
                compact_revision: self.compact_revision,
            }));
        }
        let from = from.max(self.compact_revision).max(1);
        let mut events: Vec<Event> = Vec::new();
        for item in self.history.scan_from(Revision { main: from, sub: 0 }) {
            let (rev, rec) = item?;
            if !range.contains(&rec.kv.key) {
                continue;
            }
            let full = limit > 0 && events.len() >= limit;
            if full
                && events
                    .last()
                    .is_some_and(|last| last.kv.mod_revision != rev.main)
            {
                break;
            }
            let prev_kv = self.prev_kv(&rec.kv.key, rev)?;
            let kind = if rec.tombstone {
                EventKind::Delete
            } else {
                EventKind::Put
            };
            events.push(Event {
                kind,
                kv: rec.kv,
                prev_kv,
            });
        }
        Ok(Ok(events))
    }

    /// The value `key` had just before the change at `rev` (at or after the compact revision),
    /// if it existed and compaction keeps it.
    fn prev_kv(
        &self,
        key: &[u8],
        rev: Revision,
    ) -> Result<Option<muster_types::KeyValue>, StoreError> {
        match self.index.get(key).and_then(|ki| ki.before(rev)) {
            // A change below the compact revision followed by one at exactly it is garbage
            // (`KeyIndex::compact`) that removal may not have reached yet: answer as if it had,
            // so every node answers the same whatever its removal's progress.
            Some((prev, _))
                if prev.main < self.compact_revision && rev.main == self.compact_revision =>
            {
                Ok(None)
            }
            Some((prev, false)) => Ok(Some(self.history.load(prev)?.kv)),
            _ => Ok(None),
        }
    }
}
