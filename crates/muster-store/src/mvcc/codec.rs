//! The on-disk layout of the MVCC keyspace inside the one sled `Tree` given to
//! [`Mvcc::open`](super::Mvcc::open). Every stored key starts with a one-byte prefix naming its
//! kind; big-endian integers keep sled's byte order equal to numeric order:
//!
//! | key                                   | value                                   |
//! |---------------------------------------|-----------------------------------------|
//! | `b'a'` + member id (BE) + alarm code  | empty: a raised alarm (`alarm_key`)      |
//! | `b'h'` + `Revision::to_be_bytes()`    | bincode [`HistoryRecord`] (every write, deletes included) |
//! | `b'l'` + lease id (`i64 as u64`, BE)  | bincode [`LeaseRecord`]                 |
//! | `b'm'` + `current_revision`           | bincode `i64`                           |
//! | `b'm'` + `compact_revision`           | bincode `i64`                           |
//! | `b'm'` + `compact_done`               | bincode `i64`: the compact revision whose history removal finished |
//! | `b'r'` + request id (UTF-8)           | bincode [`DedupRecord`] (an applied `Idempotent` command's response) |
//! | `b's'` + …                            | reserved for the caller (the Raft state machine's own meta); never read or written here |
//!
//! bincode 1.3 decodes positionally: a value read as the wrong type decodes to garbage instead of
//! failing. So each stored kind has exactly one typed encode/decode pair below, and nothing else
//! touches the raw bytes.

use muster_types::{Alarm, AlarmMember, CommandResponse, KeyValue, Revision};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// Prefix of raised-alarm records.
pub(crate) const ALARM: u8 = b'a';
/// Prefix of history records.
pub(crate) const HISTORY: u8 = b'h';
/// Prefix of lease records.
pub(crate) const LEASE: u8 = b'l';
/// Prefix of request-id (de-duplication) records.
pub(crate) const DEDUP: u8 = b'r';
/// Key of the store's current revision.
pub(crate) const META_CURRENT_REVISION: &[u8] = b"mcurrent_revision";
/// Key of the compacted revision.
pub(crate) const META_COMPACT_REVISION: &[u8] = b"mcompact_revision";
/// Key of the compact revision whose removal of compacted history has finished (absent: none).
pub(crate) const META_COMPACT_DONE: &[u8] = b"mcompact_done";

/// One write to one key, stored under its revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HistoryRecord {
    /// For a put, the key-value as written; for a delete, the key with `mod_revision` = the
    /// deletion's revision and every other field zero (what a DELETE event carries).
    pub kv: KeyValue,
    pub tombstone: bool,
}

/// A granted lease (its attached keys are not stored: they follow from the keys' `lease` fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaseRecord {
    pub id: i64,
    pub ttl_secs: i64,
}

/// What the applier remembers of an applied `Idempotent` command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DedupRecord {
    pub request_id: String,
    /// Leader time of the entry that applied it; the record is dropped once entries are
    /// `REQUEST_ID_RETENTION_MS` newer.
    pub time_ms: u64,
    /// FNV-1a of the wrapped command's bincode: a repeat must be the same request.
    pub digest: u64,
    /// The response the first apply returned, replayed to every repeat.
    pub response: CommandResponse,
}

pub(crate) fn dedup_key(request_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + request_id.len());
    key.push(DEDUP);
    key.extend_from_slice(request_id.as_bytes());
    key
}

pub(crate) fn encode_dedup(rec: &DedupRecord) -> Result<Vec<u8>, StoreError> {
    bincode::serialize(rec).map_err(|source| StoreError::Codec {
        what: "request id record",
        source,
    })
}

pub(crate) fn decode_dedup(bytes: &[u8]) -> Result<DedupRecord, StoreError> {
    bincode::deserialize(bytes).map_err(|source| StoreError::Codec {
        what: "request id record",
        source,
    })
}

/// Alarm codes in alarm keys. Never renumber: they are on disk.
fn alarm_code(alarm: Alarm) -> u8 {
    match alarm {
        Alarm::NoSpace => 1,
        Alarm::Corrupt => 2,
    }
}

pub(crate) fn alarm_key(a: AlarmMember) -> [u8; 10] {
    let mut key = [0u8; 10];
    key[0] = ALARM;
    key[1..9].copy_from_slice(&a.member_id.to_be_bytes());
    key[9] = alarm_code(a.alarm);
    key
}

pub(crate) fn decode_alarm_key(key: &[u8]) -> Result<AlarmMember, StoreError> {
    let parsed = match key {
        [ALARM, id @ .., code] if id.len() == 8 => {
            let member_id = u64::from_be_bytes(id.try_into().unwrap_or_default());
            [Alarm::NoSpace, Alarm::Corrupt]
                .into_iter()
                .find(|a| alarm_code(*a) == *code)
                .map(|alarm| AlarmMember { member_id, alarm })
        }
        _ => None,
    };
    parsed.ok_or_else(|| StoreError::Corrupt {
        what: format!("malformed alarm key {key:?}"),
    })
}

pub(crate) fn history_key(rev: Revision) -> [u8; 13] {
    let mut key = [0u8; 13];
    key[0] = HISTORY;
    key[1..].copy_from_slice(&rev.to_be_bytes());
    key
}

/// The first key after every history key (the exclusive end of a history scan).
pub(crate) const HISTORY_END: [u8; 1] = [HISTORY + 1];

pub(crate) fn decode_history_key(key: &[u8]) -> Result<Revision, StoreError> {
    match key.split_first() {
        Some((&HISTORY, rest)) => Revision::from_be_bytes(rest),
        _ => None,
    }
    .ok_or_else(|| StoreError::Corrupt {
        what: format!("malformed history key {key:?}"),
    })
}

pub(crate) fn encode_history(rec: &HistoryRecord) -> Result<Vec<u8>, StoreError> {
    bincode::serialize(rec).map_err(|source| StoreError::Codec {
        what: "history record",
        source,
    })
}

pub(crate) fn decode_history(bytes: &[u8]) -> Result<HistoryRecord, StoreError> {
    bincode::deserialize(bytes).map_err(|source| StoreError::Codec {
        what: "history record",
        source,
    })
}

pub(crate) fn lease_key(id: i64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = LEASE;
    key[1..].copy_from_slice(&(id as u64).to_be_bytes());
    key
}

pub(crate) fn decode_lease_key(key: &[u8]) -> Result<i64, StoreError> {
    match key.split_first() {
        Some((&LEASE, rest)) => <[u8; 8]>::try_from(rest)
            .ok()
            .map(|b| u64::from_be_bytes(b) as i64),
        _ => None,
    }
    .ok_or_else(|| StoreError::Corrupt {
        what: format!("malformed lease key {key:?}"),
    })
}

pub(crate) fn encode_lease(rec: &LeaseRecord) -> Result<Vec<u8>, StoreError> {
    bincode::serialize(rec).map_err(|source| StoreError::Codec {
        what: "lease record",
        source,
    })
}

pub(crate) fn decode_lease(bytes: &[u8]) -> Result<LeaseRecord, StoreError> {
    bincode::deserialize(bytes).map_err(|source| StoreError::Codec {
        what: "lease record",
        source,
    })
}

/// Every meta value (`current_revision`, `compact_revision`, `compact_done`) is a revision.
pub(crate) fn encode_meta_revision(rev: i64) -> Result<Vec<u8>, StoreError> {
    bincode::serialize(&rev).map_err(|source| StoreError::Codec {
        what: "meta revision",
        source,
    })
}

pub(crate) fn decode_meta_revision(bytes: &[u8]) -> Result<i64, StoreError> {
    bincode::deserialize(bytes).map_err(|source| StoreError::Codec {
        what: "meta revision",
        source,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_round_trip_and_order_numerically() {
        let a = Revision { main: 2, sub: 7 };
        let b = Revision { main: 10, sub: 0 };
        assert!(history_key(a) < history_key(b));
        assert!(history_key(b).as_slice() < HISTORY_END.as_slice());
        assert_eq!(decode_history_key(&history_key(b)).unwrap(), b);
        assert!(decode_history_key(&lease_key(3)).is_err());
        assert_eq!(decode_lease_key(&lease_key(-5)).unwrap(), -5);
        assert!(decode_lease_key(&history_key(a)).is_err());
        for alarm in [Alarm::NoSpace, Alarm::Corrupt] {
            let m = AlarmMember {
                member_id: u64::MAX - 3,
                alarm,
            };
            assert_eq!(decode_alarm_key(&alarm_key(m)).unwrap(), m);
        }
        assert!(decode_alarm_key(&lease_key(3)).is_err());
    }

    #[test]
    fn values_round_trip() {
        let rec = HistoryRecord {
            kv: KeyValue {
                key: b"k".to_vec(),
                create_revision: 2,
                mod_revision: 3,
                version: 2,
                value: b"v".to_vec(),
                lease: 9,
            },
            tombstone: false,
        };
        assert_eq!(decode_history(&encode_history(&rec).unwrap()).unwrap(), rec);
        let lease = LeaseRecord {
            id: 9,
            ttl_secs: 10,
        };
        assert_eq!(decode_lease(&encode_lease(&lease).unwrap()).unwrap(), lease);
        assert_eq!(
            decode_meta_revision(&encode_meta_revision(42).unwrap()).unwrap(),
            42
        );
        assert!(decode_history(b"\x01").is_err());
    }
}
