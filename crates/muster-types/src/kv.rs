//! Revisions, key-values, events and key ranges, with etcd v3 semantics.

use serde::{Deserialize, Serialize};

/// A point in the store's history: `main` is the global revision (+1 per mutating request),
/// `sub` orders the writes inside one request (a Txn with many writes has one `main`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Revision {
    pub main: i64,
    pub sub: u32,
}

impl Revision {
    /// Big-endian encoding, so byte order equals numeric order (main, then sub).
    pub fn to_be_bytes(self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..8].copy_from_slice(&(self.main as u64).to_be_bytes());
        out[8..].copy_from_slice(&self.sub.to_be_bytes());
        out
    }

    /// Inverse of [`Revision::to_be_bytes`]; `None` when the slice is not 12 bytes.
    pub fn from_be_bytes(b: &[u8]) -> Option<Self> {
        let main: [u8; 8] = b.get(..8)?.try_into().ok()?;
        let sub: [u8; 4] = b.get(8..12)?.try_into().ok()?;
        if b.len() != 12 {
            return None;
        }
        Some(Revision {
            main: u64::from_be_bytes(main) as i64,
            sub: u32::from_be_bytes(sub),
        })
    }
}

/// A key and its value with etcd's metadata (mirrors `mvccpb.KeyValue`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KeyValue {
    pub key: Vec<u8>,
    /// Revision of the last creation of this key (0 when it does not exist).
    pub create_revision: i64,
    /// Revision of the last modification.
    pub mod_revision: i64,
    /// 1 on creation, +1 per modification; a deleted key has no version.
    pub version: i64,
    pub value: Vec<u8>,
    /// Attached lease id, 0 for none.
    pub lease: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change to one key, as watchers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    /// For a Delete: the key with `mod_revision` = the deletion revision, other fields zero.
    pub kv: KeyValue,
    /// The previous key-value, when there was one.
    pub prev_kv: Option<KeyValue>,
}

/// etcd's key-range convention: `range_end` empty = the single `key`; `"\0"` = every key ≥ `key`;
/// otherwise the half-open interval `[key, range_end)`. `key = "\0"` with `range_end = "\0"`
/// selects everything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KeyRange {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

impl KeyRange {
    pub fn new(key: impl Into<Vec<u8>>, range_end: impl Into<Vec<u8>>) -> Self {
        KeyRange {
            key: key.into(),
            range_end: range_end.into(),
        }
    }

    pub fn single(key: impl Into<Vec<u8>>) -> Self {
        KeyRange {
            key: key.into(),
            range_end: Vec::new(),
        }
    }

    /// All keys starting with `prefix` (etcd's `--prefix`).
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let key = prefix.into();
        let range_end = prefix_end(&key);
        KeyRange { key, range_end }
    }

    pub fn is_single(&self) -> bool {
        self.range_end.is_empty()
    }

    /// Whether `k` falls in the range.
    pub fn contains(&self, k: &[u8]) -> bool {
        if self.range_end.is_empty() {
            return k == self.key.as_slice();
        }
        if self.range_end == [0] {
            return k >= self.key.as_slice();
        }
        k >= self.key.as_slice() && k < self.range_end.as_slice()
    }

    /// The upper bound for a scan: `None` means unbounded.
    pub fn end_bound(&self) -> Option<&[u8]> {
        if self.range_end == [0] {
            None
        } else {
            Some(&self.range_end)
        }
    }

    /// Whether the two ranges share at least one key.
    pub fn overlaps(&self, other: &KeyRange) -> bool {
        let (a_lo, b_lo) = (self.key.as_slice(), other.key.as_slice());
        // A single key behaves like [key, key+"\0").
        let a_single_end;
        let a_hi: Option<&[u8]> = if self.is_single() {
            a_single_end = [self.key.as_slice(), &[0u8]].concat();
            Some(&a_single_end)
        } else {
            self.end_bound()
        };
        let b_single_end;
        let b_hi: Option<&[u8]> = if other.is_single() {
            b_single_end = [other.key.as_slice(), &[0u8]].concat();
            Some(&b_single_end)
        } else {
            other.end_bound()
        };
        let a_before_b_ends = b_hi.is_none_or(|hi| a_lo < hi);
        let b_before_a_ends = a_hi.is_none_or(|hi| b_lo < hi);
        a_before_b_ends && b_before_a_ends
    }
}

/// The smallest key greater than every key with this prefix: last byte +1, with 0xff bytes
/// rolling over ("a\xff" → "b"); an all-0xff or empty prefix gives "\0" (no upper bound).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_rolls_over() {
        assert_eq!(prefix_end(b"a"), b"b".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn range_contains_follows_etcd_convention() {
        assert!(KeyRange::single("a").contains(b"a"));
        assert!(!KeyRange::single("a").contains(b"ab"));
        assert!(KeyRange::prefix("a").contains(b"ab"));
        assert!(!KeyRange::prefix("a").contains(b"b"));
        assert!(KeyRange::new("b", vec![0]).contains(b"zzz"));
        assert!(!KeyRange::new("b", vec![0]).contains(b"a"));
        assert!(KeyRange::new(vec![0], vec![0]).contains(b"\x01"));
    }

    #[test]
    fn overlaps() {
        assert!(KeyRange::single("a").overlaps(&KeyRange::prefix("a")));
        assert!(!KeyRange::single("b").overlaps(&KeyRange::prefix("a")));
        assert!(KeyRange::new("a", "c").overlaps(&KeyRange::new("b", "d")));
        assert!(!KeyRange::new("a", "b").overlaps(&KeyRange::new("b", "d")));
        assert!(KeyRange::new("x", vec![0]).overlaps(&KeyRange::single("y")));
    }

    #[test]
    fn revision_bytes_order_numerically() {
        let a = Revision { main: 2, sub: 9 }.to_be_bytes();
        let b = Revision { main: 10, sub: 0 }.to_be_bytes();
        assert!(a < b);
        assert_eq!(
            Revision::from_be_bytes(&b),
            Some(Revision { main: 10, sub: 0 })
        );
        assert_eq!(Revision::from_be_bytes(&b[..11]), None);
    }
}
