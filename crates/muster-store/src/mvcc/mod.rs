//! The MVCC keyspace and leases, with etcd v3 semantics: the only code that changes state.
//!
//! [`Mvcc`] lives over one sled `Tree` (layout in `codec`). Every write is a history record
//! keyed by its revision; an in-memory index holds each key's live value and the revisions at
//! which it changed. Current reads and everything apply needs come from memory; reads at old
//! revisions and watch catch-up read the history records. Writes go into the caller's
//! `sled::Batch`, which the caller applies atomically with its own meta.
//!
//! Layout:
//! - `mod.rs`: [`Mvcc`], opening and rebuilding the in-memory state.
//! - `codec`: the on-disk layout; one typed encode/decode per stored kind.
//! - `index`: the in-memory key index (live values, change revisions, compaction).
//! - `history`: history records (write, load, scan) and [`Mvcc::events_since`].
//! - `apply`: [`Mvcc::apply`], put/delete primitives, DeleteRange.
//! - `compact`: Compact (recorded in apply) and the deferred, bounded removal of compacted
//!   history ([`Mvcc::compact_step`], [`drop_compacted`] for snapshots).
//! - `txn`: Txn compares, checks and execution.
//! - `read`: [`Mvcc::range`].
//! - `lease`: leases, LeaseGrant, LeaseRevoke and the leader's batched LeaseExpire.
//! - `register`: the registry's Register (lease grant + instance put, one revision).
//! - `alarm`: raised alarms (NOSPACE, CORRUPT) and the writes they stop.
//! - `dedup`: request ids of applied `Idempotent` commands (retries never apply twice).
//! - `test_util`, `tests_*`: unit tests against a temporary sled tree, one file per area.

mod alarm;
mod apply;
mod codec;
mod compact;
mod dedup;
mod history;
mod index;
mod lease;
mod read;
mod register;
mod txn;

#[cfg(test)]
mod test_util;
#[cfg(test)]
mod tests_alarm;
#[cfg(test)]
mod tests_batch;
#[cfg(test)]
mod tests_compact;
#[cfg(test)]
mod tests_dedup;
#[cfg(test)]
mod tests_history;
#[cfg(test)]
mod tests_kv;
#[cfg(test)]
mod tests_lease;
#[cfg(test)]
mod tests_range;
#[cfg(test)]
mod tests_register;
#[cfg(test)]
mod tests_txn;

pub use compact::{drop_compacted, CompactStep};
pub use lease::LeaseInfo;

/// Key of the store's current revision record (a bincode `i64`), for readers of raw records.
pub const META_CURRENT_REVISION_KEY: &[u8] = META_CURRENT_REVISION;

/// Whether a raw keyspace record is a raised alarm's (backups restore without them).
pub fn is_alarm_record(key: &[u8]) -> bool {
    key.first() == Some(&ALARM)
}

use alarm::Alarms;
use codec::{
    decode_alarm_key, decode_dedup, decode_lease, decode_lease_key, decode_meta_revision, ALARM,
    DEDUP, LEASE, META_COMPACT_DONE, META_COMPACT_REVISION, META_CURRENT_REVISION,
};
use compact::Cleanup;
use dedup::Dedup;
use history::History;
use index::Index;
use lease::Leases;

use crate::error::StoreError;

/// The keyspace and leases. Not synchronised: the caller serialises `apply` against reads.
pub struct Mvcc {
    history: History,
    index: Index,
    leases: Leases,
    /// Request ids of applied `Idempotent` commands, with their responses.
    dedup: Dedup,
    /// Raised alarms (NOSPACE, CORRUPT), which stop some writes at apply.
    alarms: Alarms,
    /// The store's revision: 1 when empty (as in etcd), +1 per command that changed a key.
    current_revision: i64,
    /// Reads below this revision fail; 0 when never compacted.
    compact_revision: i64,
    /// The removal of history compacted away, while one is due (see `compact`).
    cleanup: Option<Cleanup>,
}

impl Mvcc {
    /// Opens over `tree`, rebuilding the in-memory index and leases from the history and lease
    /// records. Keys with the caller's prefix `b's'` are left alone.
    pub fn open(tree: sled::Tree) -> Result<Mvcc, StoreError> {
        let read_meta = |key: &[u8]| -> Result<Option<i64>, StoreError> {
            tree.get(key)?
                .map(|bytes| decode_meta_revision(&bytes))
                .transpose()
        };
        let current_revision = read_meta(META_CURRENT_REVISION)?.unwrap_or(1);
        let compact_revision = read_meta(META_COMPACT_REVISION)?.unwrap_or(0);
        let compact_done = read_meta(META_COMPACT_DONE)?.unwrap_or(0);
        if compact_revision > current_revision {
            return Err(StoreError::Corrupt {
                what: format!("compact revision {compact_revision} is above current revision {current_revision}"),
            });
        }

        let mut leases = Leases::default();
        for item in tree.scan_prefix([LEASE]) {
            let (key, value) = item?;
            let id = decode_lease_key(&key)?;
            let rec = decode_lease(&value)?;
            if rec.id != id {
                return Err(StoreError::Corrupt {
                    what: format!("lease record under id {id} says id {}", rec.id),
                });
            }
            leases.grant(rec.id, rec.ttl_secs);
        }

        let mut dedup = Dedup::default();
        for item in tree.scan_prefix([DEDUP]) {
            let (_, value) = item?;
            dedup.insert(decode_dedup(&value)?);
        }

        let mut alarms = Alarms::default();
        for item in tree.scan_prefix([ALARM]) {
            let (key, _) = item?;
            alarms.insert(decode_alarm_key(&key)?);
        }

        let history = History::new(tree);
        let mut index = Index::default();
        for item in history.scan_all() {
            let (rev, rec, bytes) = item?;
            if rev.main > current_revision {
                return Err(StoreError::Corrupt {
                    what: format!(
                        "history record {rev:?} is past the current revision {current_revision}"
                    ),
                });
            }
            if rec.tombstone {
                index.delete(rev, &rec.kv.key, bytes);
            } else {
                index.put(rev, rec.kv, bytes);
            }
        }
        for kv in index.all_live() {
            if !leases.attach(kv.lease, &kv.key) {
                return Err(StoreError::Corrupt {
                    what: format!(
                        "key {:?} is attached to lease {} which does not exist",
                        kv.key, kv.lease
                    ),
                });
            }
        }
        // Stopped mid-removal (or never finished one): a new pass redoes it from the first key.
        let cleanup = (compact_revision > compact_done).then(|| Cleanup::new(compact_revision));
        tracing::debug!(
            current_revision,
            compact_revision,
            compact_done,
            keys = index.live_count(),
            "mvcc opened"
        );
        Ok(Mvcc {
            history,
            index,
            leases,
            dedup,
            alarms,
            current_revision,
            compact_revision,
            cleanup,
        })
    }

    /// The store's revision: 1 when empty (the first write is revision 2), as in etcd.
    pub fn current_revision(&self) -> i64 {
        self.current_revision
    }

    /// The revision history was compacted at; 0 when never compacted.
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// The caller has written its batch (every write since the last call) to the tree: history
    /// reads no longer need the pending copies.
    pub fn persisted(&mut self) {
        self.history.persisted();
    }

    /// Bytes the keyspace's history takes (every revision of every key not yet compacted
    /// away, as stored): what the space quota (`--quota-backend-bytes`) limits. Compaction
    /// lowers it as its removal pass goes.
    pub fn space_used(&self) -> u64 {
        self.index.history_bytes()
    }

    /// Number of live keys.
    pub fn key_count(&self) -> usize {
        self.index.live_count()
    }
}
