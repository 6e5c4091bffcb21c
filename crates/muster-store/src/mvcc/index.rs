//! The in-memory key index: for every key, its live value (if any) and the revisions at which it
//! changed, kept until compaction. Current reads, compares and everything apply needs are served
//! from here; a read at an old revision finds here which revision to fetch and loads the value
//! from the history records. Rebuilt from the history records on open.

use std::collections::btree_map;
use std::collections::BTreeMap;
use std::ops::Bound;

use muster_types::{KeyRange, KeyValue, Revision};

/// One change of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Change {
    pub rev: Revision,
    pub tombstone: bool,
    /// Bytes its history record takes (key and value as stored), for the space quota.
    pub bytes: u32,
}

/// One key's state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct KeyIndex {
    /// The current value; `None` while the key is deleted (its history may still be readable).
    pub live: Option<KeyValue>,
    /// Every change not yet compacted away, ascending by revision.
    pub revs: Vec<Change>,
}

impl KeyIndex {
    /// The latest change at or before main revision `at`: (revision, is a tombstone).
    pub fn latest_at(&self, at: i64) -> Option<(Revision, bool)> {
        let n = self.revs.partition_point(|c| c.rev.main <= at);
        let c = self.revs.get(n.checked_sub(1)?)?;
        Some((c.rev, c.tombstone))
    }

    /// The change just before `rev`: (revision, is a tombstone).
    pub fn before(&self, rev: Revision) -> Option<(Revision, bool)> {
        let n = self.revs.partition_point(|c| c.rev < rev);
        let c = self.revs.get(n.checked_sub(1)?)?;
        Some((c.rev, c.tombstone))
    }

    /// Whether `rev` is the key's latest change.
    pub fn is_latest(&self, rev: Revision) -> bool {
        self.revs.last().map(|c| c.rev) == Some(rev)
    }

    /// Drops the changes no read at or after `at` (and no watch starting at `at`) needs, and
    /// returns them. Keeps every change at `at` or later; of the older ones, keeps only the
    /// latest, and only if no change at `at` supersedes it and it is a put (a tombstone below
    /// `at` says nothing an absent history does not say).
    pub fn compact(&mut self, at: i64) -> impl Iterator<Item = Change> + '_ {
        let first_kept_candidate = self.revs.partition_point(|c| c.rev.main < at);
        let has_change_at = self
            .revs
            .get(first_kept_candidate)
            .is_some_and(|c| c.rev.main == at);
        let keep_from = match first_kept_candidate
            .checked_sub(1)
            .and_then(|i| self.revs.get(i))
        {
            Some(c) if !c.tombstone && !has_change_at => first_kept_candidate - 1,
            _ => first_kept_candidate,
        };
        self.revs.drain(..keep_from)
    }
}

/// Every key that is live or still has history.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Index {
    keys: BTreeMap<Vec<u8>, KeyIndex>,
    /// Number of keys with a live value (kept so `key_count` is O(1)).
    live_count: usize,
    /// Bytes of every change's history record still indexed (see [`Change::bytes`]).
    history_bytes: u64,
}

impl Index {
    pub fn get(&self, key: &[u8]) -> Option<&KeyIndex> {
        self.keys.get(key)
    }

    pub fn live(&self, key: &[u8]) -> Option<&KeyValue> {
        self.keys.get(key)?.live.as_ref()
    }

    pub fn live_count(&self) -> usize {
        self.live_count
    }

    /// Bytes of the history records of every change not yet compacted away.
    pub fn history_bytes(&self) -> u64 {
        self.history_bytes
    }

    /// Number of keys that are live or still have history.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The keys in `range` (live or not), in key order.
    pub fn range(&self, range: &KeyRange) -> btree_map::Range<'_, Vec<u8>, KeyIndex> {
        let start = range.key.as_slice();
        let end = if range.is_single() {
            Bound::Included(start)
        } else {
            match range.end_bound() {
                None => Bound::Unbounded,
                // BTreeMap::range panics on start > end; an inverted range selects nothing (as in
                // etcd), and [start, start) is a valid empty range.
                Some(end) if end <= start => Bound::Excluded(start),
                Some(end) => Bound::Excluded(end),
            }
        };
        self.keys.range::<[u8], _>((Bound::Included(start), end))
    }

    /// The live key-values in `range`, in key order.
    pub fn live_in<'a>(&'a self, range: &KeyRange) -> impl Iterator<Item = &'a KeyValue> + 'a {
        self.range(range).filter_map(|(_, ki)| ki.live.as_ref())
    }

    /// Every live key-value, in key order.
    pub fn all_live(&self) -> impl Iterator<Item = &KeyValue> {
        self.keys.values().filter_map(|ki| ki.live.as_ref())
    }

    /// Replaces a live value without recording a change (the corruption test hook only).
    pub fn set_live_for_testing(&mut self, kv: KeyValue) {
        if let Some(ki) = self.keys.get_mut(&kv.key) {
            ki.live = Some(kv);
        }
    }

    /// Records a put at `rev` whose history record takes `bytes`; `kv` is the new value.
    pub fn put(&mut self, rev: Revision, kv: KeyValue, bytes: u32) {
        let ki = self.keys.entry(kv.key.clone()).or_default();
        if ki.live.is_none() {
            self.live_count += 1;
        }
        ki.revs.push(Change {
            rev,
            tombstone: false,
            bytes,
        });
        self.history_bytes += u64::from(bytes);
        ki.live = Some(kv);
    }

    /// Records a delete of `key` at `rev` whose tombstone takes `bytes`; returns the value it
    /// had.
    pub fn delete(&mut self, rev: Revision, key: &[u8], bytes: u32) -> Option<KeyValue> {
        let ki = self.keys.entry(key.to_vec()).or_default();
        ki.revs.push(Change {
            rev,
            tombstone: true,
            bytes,
        });
        self.history_bytes += u64::from(bytes);
        let prev = ki.live.take();
        if prev.is_some() {
            self.live_count -= 1;
        }
        prev
    }

    /// Compacts the keys from `from` on (inclusive; `None` = the first key) at `at` (see
    /// [`KeyIndex::compact`]) and forgets keys left with neither a live value nor history.
    /// Stops before the next key once `max_keys` keys were visited or `max_revs` revisions
    /// dropped, so one call stays short however big the index is. Returns the dropped revisions
    /// (their history records are now garbage) and the key to resume from, `None` when it
    /// reached the end.
    pub fn compact_from(
        &mut self,
        from: Option<&[u8]>,
        at: i64,
        max_keys: usize,
        max_revs: usize,
    ) -> (Vec<Revision>, Option<Vec<u8>>) {
        let start = from.map_or(Bound::Unbounded, Bound::Included);
        let mut removed = Vec::new();
        let mut emptied = Vec::new();
        let mut resume = None;
        for (visited, (key, ki)) in self
            .keys
            .range_mut::<[u8], _>((start, Bound::Unbounded))
            .enumerate()
        {
            if visited >= max_keys || removed.len() >= max_revs {
                resume = Some(key.clone());
                break;
            }
            for c in ki.compact(at) {
                self.history_bytes = self.history_bytes.saturating_sub(u64::from(c.bytes));
                removed.push(c.rev);
            }
            if ki.live.is_none() && ki.revs.is_empty() {
                emptied.push(key.clone());
            }
        }
        for key in emptied {
            self.keys.remove(&key);
        }
        (removed, resume)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(main: i64) -> Revision {
        Revision { main, sub: 0 }
    }

    fn kv(key: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            mod_revision: rev,
            ..Default::default()
        }
    }

    #[test]
    fn range_handles_single_prefix_from_key_and_inverted() {
        let mut ix = Index::default();
        for (i, k) in ["a", "ab", "b", "c"].iter().enumerate() {
            ix.put(rev(i as i64 + 2), kv(k, i as i64 + 2), 1);
        }
        let keys = |r: KeyRange| ix.range(&r).map(|(k, _)| k.clone()).collect::<Vec<_>>();
        assert_eq!(keys(KeyRange::single("a")), vec![b"a".to_vec()]);
        assert_eq!(
            keys(KeyRange::prefix("a")),
            vec![b"a".to_vec(), b"ab".to_vec()]
        );
        assert_eq!(
            keys(KeyRange::new("b", vec![0])),
            vec![b"b".to_vec(), b"c".to_vec()]
        );
        assert_eq!(keys(KeyRange::new(vec![0], vec![0])).len(), 4);
        assert!(keys(KeyRange::new("c", "a")).is_empty());
        assert!(keys(KeyRange::new("b", "b")).is_empty());
    }

    #[test]
    fn compact_keeps_what_reads_at_or_after_need() {
        // put@2, put@3, del@4, put@6
        let change = |main: i64, tombstone: bool| Change {
            rev: rev(main),
            tombstone,
            bytes: 10,
        };
        let revs_of = |ki: &KeyIndex| ki.revs.iter().map(|c| c.rev.main).collect::<Vec<_>>();
        let ki = KeyIndex {
            live: None,
            revs: vec![
                change(2, false),
                change(3, false),
                change(4, true),
                change(6, false),
            ],
        };
        let dropped =
            |ki: &mut KeyIndex, at: i64| ki.compact(at).map(|c| c.rev.main).collect::<Vec<_>>();
        let mut a = ki.clone();
        assert_eq!(dropped(&mut a, 3), vec![2]);
        // Latest before 5 is a tombstone: dropped with everything older.
        let mut b = ki.clone();
        assert_eq!(dropped(&mut b, 5).len(), 3);
        assert_eq!(revs_of(&b), vec![6]);
        // A tombstone exactly at the compact revision stays (a watch from there must see it).
        let mut c = ki.clone();
        assert_eq!(dropped(&mut c, 4), vec![2, 3]);
        assert_eq!(revs_of(&c), vec![4, 6]);
        let mut d = ki;
        assert_eq!(dropped(&mut d, 9).len(), 3);
        assert_eq!(revs_of(&d), vec![6]);
    }

    #[test]
    fn history_bytes_follow_writes_and_compaction() {
        let mut ix = Index::default();
        ix.put(rev(2), kv("a", 2), 100);
        ix.put(rev(3), kv("a", 3), 50);
        ix.delete(rev(4), b"a", 20);
        ix.put(rev(5), kv("b", 5), 7);
        assert_eq!(ix.history_bytes(), 177);
        // At 4 the tombstone stays (a change at the compact revision); puts 2 and 3 go.
        let (removed, resume) = ix.compact_from(None, 4, 100, 100);
        assert_eq!(removed.len(), 2);
        assert_eq!(resume, None);
        assert_eq!(ix.history_bytes(), 27);
    }
}
