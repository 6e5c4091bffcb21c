//! Compaction (`Command::Compact`): cheap in apply; the compacted history is removed afterwards,
//! in bounded steps.
//!
//! Applying a Compact only checks the revision and records it (in memory, and its meta record in
//! the caller's batch): from that entry on every node refuses reads and watches below it. The
//! history records no read needs any more are removed later by [`Mvcc::compact_step`], which the
//! caller runs outside apply, a bounded number of keys and records at a time (the Raft state
//! machine's cleanup task). Removing 1,000,000 revisions inside the apply held the state
//! machine's lock and built one sled batch with a remove per record.
//!
//! What readers observe does not depend on how far removal has got, so each node removes at its
//! own pace:
//! - a read at or after the compact revision sees each key's latest change at or before its
//!   revision; a change removal drops is never that one, or is a tombstone, which reads as
//!   absent just like no record (the rule is [`KeyIndex::compact`]);
//! - the one place a droppable record could show is a watch event's `prev_kv`, and `prev_kv`
//!   treats what removal will drop as already gone (`history`).
//!
//! Removal is crash-safe by redoing it: its removes go through the caller's batch, and the step
//! that ends a pass records the compact revision as done ([`META_COMPACT_DONE`]) in the same
//! batch. A store opened with the compact revision above the done one (a crash mid-removal, an
//! installed snapshot) starts a new pass over every key; compaction is idempotent, so a redone
//! step removes only what is still there. A snapshot built mid-removal leaves the garbage out
//! ([`drop_compacted`]).

use std::collections::{HashMap, HashSet};

use muster_types::ApplyError;

use super::apply::WriteCtx;
use super::codec::{
    decode_history, decode_history_key, decode_meta_revision, encode_meta_revision, history_key,
    HISTORY, META_COMPACT_DONE, META_COMPACT_REVISION,
};
use super::index::{Change, KeyIndex};
use super::Mvcc;
use crate::error::StoreError;

/// A removal pass in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cleanup {
    /// The compact revision the pass removes history up to.
    at: i64,
    /// The key the next step starts at; `None` = the first key.
    from: Option<Vec<u8>>,
    /// Records removed so far by this pass (for the log line at its end).
    removed: usize,
}

impl Cleanup {
    pub fn new(at: i64) -> Cleanup {
        Cleanup {
            at,
            from: None,
            removed: 0,
        }
    }
}

/// What one [`Mvcc::compact_step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompactStep {
    /// History records removed (into the caller's batch).
    pub removed: usize,
    /// Whether nothing is left to remove.
    pub done: bool,
}

impl Mvcc {
    /// Compact: from this entry on, reads and watches below `revision` are refused. Does not
    /// change the revision. Same checks, in the same order, as etcd. The history it makes
    /// garbage is removed later, by [`Mvcc::compact_step`].
    pub(super) fn apply_compact(
        &mut self,
        w: &mut WriteCtx<'_>,
        revision: i64,
    ) -> Result<Result<(), ApplyError>, StoreError> {
        if revision <= self.compact_revision {
            return Ok(Err(ApplyError::Compacted {
                compact_revision: self.compact_revision,
            }));
        }
        if revision > self.current_revision {
            return Ok(Err(ApplyError::FutureRevision {
                current_revision: self.current_revision,
            }));
        }
        self.compact_revision = revision;
        w.batch
            .insert(META_COMPACT_REVISION, encode_meta_revision(revision)?);
        // A pass still running for an older revision starts over: the keys it has done may
        // hold more garbage at this one.
        self.cleanup = Some(Cleanup::new(revision));
        tracing::info!(revision, "compacted; history removal deferred");
        Ok(Ok(()))
    }

    /// Whether history made garbage by a compaction is still waiting to be removed.
    pub fn compaction_pending(&self) -> bool {
        self.cleanup.is_some()
    }

    /// Removes the compacted history of the next keys into `batch`: at most `max_keys` keys
    /// visited and (about) `max_records` records removed, so the caller's lock hold and batch
    /// stay small. Call until it says `done`; a later Compact restarts the pass.
    pub fn compact_step(
        &mut self,
        batch: &mut sled::Batch,
        max_keys: usize,
        max_records: usize,
    ) -> Result<CompactStep, StoreError> {
        let Some(cleanup) = &mut self.cleanup else {
            return Ok(CompactStep {
                removed: 0,
                done: true,
            });
        };
        let at = cleanup.at;
        let (removed, resume) =
            self.index
                .compact_from(cleanup.from.as_deref(), at, max_keys, max_records);
        cleanup.removed += removed.len();
        cleanup.from = resume;
        let done = cleanup.from.is_none();
        let total = cleanup.removed;
        for rev in &removed {
            self.history.remove(batch, *rev);
        }
        if done {
            batch.insert(META_COMPACT_DONE, encode_meta_revision(at)?);
            self.cleanup = None;
            tracing::info!(revision = at, removed = total, "removed compacted history");
        }
        Ok(CompactStep {
            removed: removed.len(),
            done,
        })
    }
}

/// Drops from a snapshot's `records` (every keyspace record, in key order) the history records
/// the compaction recorded in them has made garbage, exactly as a finished removal pass would,
/// and marks the removal done. Depends on the records only, so the same state always gives the
/// same snapshot. Returns how many records it dropped.
pub fn drop_compacted(records: &mut Vec<(Vec<u8>, Vec<u8>)>) -> Result<usize, StoreError> {
    let find = |records: &[(Vec<u8>, Vec<u8>)], key: &[u8]| {
        records.binary_search_by(|(k, _)| k.as_slice().cmp(key))
    };
    let at = match find(records, META_COMPACT_REVISION) {
        Ok(i) => decode_meta_revision(&records[i].1)?,
        Err(_) => return Ok(0),
    };
    // Each key's changes at or below `at`, in revision order: the only ones compaction looks at.
    let mut changes: HashMap<Vec<u8>, KeyIndex> = HashMap::new();
    for (key, value) in records.iter() {
        if key.first() != Some(&HISTORY) {
            continue;
        }
        let rev = decode_history_key(key)?;
        if rev.main > at {
            // History keys sort by revision: the rest are all later.
            break;
        }
        let rec = decode_history(value)?;
        changes.entry(rec.kv.key).or_default().revs.push(Change {
            rev,
            tombstone: rec.tombstone,
            bytes: 0,
        });
    }
    let garbage: HashSet<[u8; 13]> = changes
        .values_mut()
        .flat_map(|ki| ki.compact(at))
        .map(|c| history_key(c.rev))
        .collect();
    drop(changes);
    records.retain(|(key, _)| !garbage.contains(key.as_slice()));
    let done = encode_meta_revision(at)?;
    match find(records, META_COMPACT_DONE) {
        Ok(i) => records[i].1 = done,
        Err(i) => records.insert(i, (META_COMPACT_DONE.to_vec(), done)),
    }
    Ok(garbage.len())
}
