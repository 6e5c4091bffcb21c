//! Request-id de-duplication: the applier's memory of applied `Command::Idempotent` commands,
//! so a client retry of a non-idempotent write (after "commit status unknown", typically a
//! leader change) gets the first answer instead of applying twice.
//!
//! - A record (request id → digest of the wrapped command, its response, leader time) is
//!   written into the same sled batch as the command's own effects: a crash keeps both or
//!   neither, so "applied" and "remembered" can never disagree.
//! - Records live in the keyspace tree (prefix `b'r'`, see `codec`), so snapshots carry them
//!   and [`Mvcc::open`](super::Mvcc::open) rebuilds this index from them: a node that catches
//!   up by snapshot de-duplicates exactly like one that replayed the log.
//! - Records are forgotten deterministically: each apply drops those more than
//!   [`REQUEST_ID_RETENTION_MS`] older than the entry's `time_ms` (leader time carried in the
//!   log, never a local clock), so every node forgets the same records at the same entry.
//! - A repeat must be the same request: its command's digest must match, else it fails with
//!   [`ApplyError::RequestIdReused`] (a client bug must not be answered with another request's
//!   result).

use std::collections::{BTreeSet, HashMap};

use muster_types::{ApplyError, Command, CommandResponse, Event, REQUEST_ID_RETENTION_MS};

use super::codec::{dedup_key, encode_dedup, DedupRecord};
use super::Mvcc;
use crate::error::StoreError;

/// Every remembered request id, with a time index for pruning.
#[derive(Debug, Default)]
pub(crate) struct Dedup {
    by_id: HashMap<String, DedupRecord>,
    /// (time_ms, request id), oldest first.
    by_time: BTreeSet<(u64, String)>,
}

impl Dedup {
    pub fn get(&self, request_id: &str) -> Option<&DedupRecord> {
        self.by_id.get(request_id)
    }

    pub fn insert(&mut self, rec: DedupRecord) {
        if let Some(old) = self.by_id.get(&rec.request_id) {
            self.by_time.remove(&(old.time_ms, old.request_id.clone()));
        }
        self.by_time.insert((rec.time_ms, rec.request_id.clone()));
        self.by_id.insert(rec.request_id.clone(), rec);
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Forgets (in memory and, through `batch`, on disk) every record older than the retention
    /// window ending at `now_ms`.
    pub fn prune(&mut self, now_ms: u64, batch: &mut sled::Batch) {
        let horizon = now_ms.saturating_sub(REQUEST_ID_RETENTION_MS);
        while let Some((time_ms, _)) = self.by_time.first() {
            if *time_ms >= horizon {
                break;
            }
            if let Some((_, id)) = self.by_time.pop_first() {
                batch.remove(dedup_key(&id));
                self.by_id.remove(&id);
            }
        }
    }
}

/// FNV-1a over the command's bincode: stable across builds and platforms (std's hasher is not).
fn digest(cmd: &Command) -> Result<u64, StoreError> {
    let bytes = bincode::serialize(cmd).map_err(|source| StoreError::Codec {
        what: "command digest",
        source,
    })?;
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    Ok(h)
}

impl Mvcc {
    /// `Command::Idempotent`: replays the remembered response of `request_id`, or applies `cmd`
    /// and remembers its response (errors included: a retry must see what the first try saw).
    pub(super) fn apply_idempotent(
        &mut self,
        time_ms: u64,
        request_id: &str,
        cmd: &Command,
        batch: &mut sled::Batch,
        events: &mut Vec<Event>,
    ) -> Result<CommandResponse, StoreError> {
        let digest = digest(cmd)?;
        if let Some(rec) = self.dedup.get(request_id) {
            tracing::debug!(
                request_id,
                same = rec.digest == digest,
                "repeated request id"
            );
            if rec.digest == digest {
                return Ok(rec.response.clone());
            }
            return Ok(CommandResponse {
                revision: self.current_revision,
                result: Err(ApplyError::RequestIdReused {
                    request_id: request_id.to_string(),
                }),
            });
        }
        let response = self.apply(time_ms, cmd, batch, events)?;
        let rec = DedupRecord {
            request_id: request_id.to_string(),
            time_ms,
            digest,
            response: response.clone(),
        };
        batch.insert(dedup_key(request_id), encode_dedup(&rec)?);
        self.dedup.insert(rec);
        Ok(response)
    }

    /// Number of remembered request ids.
    pub fn request_id_count(&self) -> usize {
        self.dedup.len()
    }
}
