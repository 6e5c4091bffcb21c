//! History: old-revision reads, compaction, watch catch-up (`events_since`), reopen.
#![allow(clippy::unwrap_used)]

use muster_types::{
    ApplyError, Command, EventKind, KeyRange, PutRequest, ResponseBody, TxnRequest,
};

use super::codec::HISTORY;
use super::test_util::*;

fn history_len(h: &H) -> usize {
    h.tree.scan_prefix([HISTORY]).count()
}

/// a: put@2 put@3 del@5 put@7; b: put@4 put@6; c: put@8 (txn with b@8 too)
fn fixture() -> H {
    let mut h = H::new();
    h.put("a", "a1"); // 2
    h.put("a", "a2"); // 3
    h.put("b", "b1"); // 4
    h.delete(KeyRange::single("a")); // 5
    h.put("b", "b2"); // 6
    h.put("a", "a3"); // 7
    let (rev, r) = h.txn(TxnRequest {
        success: vec![put_op("c", "c1"), put_op("b", "b3")],
        ..Default::default()
    });
    assert_eq!(rev, 8);
    assert!(r.unwrap().succeeded);
    assert_eq!(h.rev(), 8);
    h
}

fn kv_pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn reads_at_every_old_revision() {
    let h = fixture();
    assert_eq!(h.all_at(1), kv_pairs(&[]));
    assert_eq!(h.all_at(2), kv_pairs(&[("a", "a1")]));
    assert_eq!(h.all_at(3), kv_pairs(&[("a", "a2")]));
    assert_eq!(h.all_at(4), kv_pairs(&[("a", "a2"), ("b", "b1")]));
    assert_eq!(h.all_at(5), kv_pairs(&[("b", "b1")]));
    assert_eq!(h.all_at(6), kv_pairs(&[("b", "b2")]));
    assert_eq!(h.all_at(7), kv_pairs(&[("a", "a3"), ("b", "b2")]));
    assert_eq!(
        h.all_at(8),
        kv_pairs(&[("a", "a3"), ("b", "b3"), ("c", "c1")])
    );
    // Metadata as of then.
    let a3 = h.get_at("a", 3).unwrap();
    assert_eq!((a3.create_revision, a3.mod_revision, a3.version), (2, 3, 2));
    let a7 = h.get_at("a", 7).unwrap();
    assert_eq!((a7.create_revision, a7.mod_revision, a7.version), (7, 7, 1));
}

#[test]
fn compaction_drops_unneeded_history_and_keeps_later_reads() {
    let mut h = fixture();
    let expected: Vec<_> = (6..=8).map(|r| h.all_at(r)).collect();
    assert_eq!(history_len(&h), 8);
    let r = h.apply(Command::Compact { revision: 6 });
    assert_eq!((r.revision, r.result), (8, Ok(ResponseBody::Compact)));
    assert_eq!(h.mvcc.compact_revision(), 6);
    h.finish_compaction();
    // Kept: a@7 (a's latest ≤ 6 is a tombstone below 6: dropped), b@6, b@8, c@8.
    assert_eq!(history_len(&h), 4);
    for (i, r) in (6..=8).enumerate() {
        assert_eq!(h.all_at(r), expected[i], "read at {r}");
    }
    for r in 1..6 {
        assert_eq!(
            h.range(muster_types::RangeRequest {
                range: all(),
                revision: r,
                ..Default::default()
            }),
            Err(ApplyError::Compacted {
                compact_revision: 6
            })
        );
    }
    // Compaction does not consume a revision.
    assert_eq!(h.put("d", "1").revision, 9);
}

#[test]
fn compaction_keeps_a_tombstone_at_the_compact_revision() {
    let mut h = fixture();
    h.apply(Command::Compact { revision: 5 });
    assert_eq!(h.all_at(5), kv_pairs(&[("b", "b1")]));
    // A watch starting at the compact revision still sees the delete made at it.
    let evs = h.mvcc.events_since(5, &all(), 0).unwrap().unwrap();
    assert_eq!(evs[0].kind, EventKind::Delete);
    assert_eq!(
        (s(&evs[0].kv.key), evs[0].kv.mod_revision),
        ("a".to_string(), 5)
    );
}

#[test]
fn compact_checks_its_revision() {
    let mut h = fixture();
    assert_eq!(
        h.apply(Command::Compact { revision: 9 }).result,
        Err(ApplyError::FutureRevision {
            current_revision: 8
        })
    );
    assert_eq!(
        h.apply(Command::Compact { revision: 0 }).result,
        Err(ApplyError::Compacted {
            compact_revision: 0
        })
    );
    assert_eq!(
        h.apply(Command::Compact { revision: 4 }).result,
        Ok(ResponseBody::Compact)
    );
    assert_eq!(
        h.apply(Command::Compact { revision: 4 }).result,
        Err(ApplyError::Compacted {
            compact_revision: 4
        })
    );
    assert_eq!(
        h.apply(Command::Compact { revision: 3 }).result,
        Err(ApplyError::Compacted {
            compact_revision: 4
        })
    );
    // Compacting at the current revision is allowed and keeps the current state readable.
    assert_eq!(
        h.apply(Command::Compact { revision: 8 }).result,
        Ok(ResponseBody::Compact)
    );
    h.finish_compaction();
    assert_eq!(
        h.all_at(8),
        kv_pairs(&[("a", "a3"), ("b", "b3"), ("c", "c1")])
    );
    assert_eq!(history_len(&h), 3);
}

#[test]
fn compaction_forgets_deleted_keys_entirely() {
    let mut h = H::new();
    h.put("gone", "1"); // 2
    h.delete(KeyRange::single("gone")); // 3
    h.put("x", "1"); // 4
    h.apply(Command::Compact { revision: 4 });
    h.finish_compaction();
    assert_eq!(history_len(&h), 1);
    assert!(h.mvcc.index.get(b"gone").is_none());
    assert_eq!(h.mvcc.key_count(), 1);
}

#[test]
fn events_since_in_order_filtered_by_range() {
    let h = fixture();
    let evs = h.mvcc.events_since(2, &all(), 0).unwrap().unwrap();
    let got: Vec<(EventKind, String, i64)> = evs
        .iter()
        .map(|e| (e.kind, s(&e.kv.key), e.kv.mod_revision))
        .collect();
    use EventKind::*;
    assert_eq!(
        got,
        [
            (Put, "a".into(), 2),
            (Put, "a".into(), 3),
            (Put, "b".into(), 4),
            (Delete, "a".into(), 5),
            (Put, "b".into(), 6),
            (Put, "a".into(), 7),
            (Put, "c".into(), 8),
            (Put, "b".into(), 8),
        ]
    );
    // Same events as apply produced, prev_kv included.
    assert_eq!(evs, h.events);
    let only_b = h
        .mvcc
        .events_since(5, &KeyRange::single("b"), 0)
        .unwrap()
        .unwrap();
    assert_eq!(
        only_b.iter().map(|e| e.kv.mod_revision).collect::<Vec<_>>(),
        [6, 8]
    );
    assert_eq!(only_b[0].prev_kv.as_ref().unwrap().value, b"b1");
    assert!(h
        .mvcc
        .events_since(9, &all(), 0)
        .unwrap()
        .unwrap()
        .is_empty());
    // from ≤ 0: everything still stored.
    assert_eq!(h.mvcc.events_since(0, &all(), 0).unwrap().unwrap().len(), 8);
}

#[test]
fn events_since_never_splits_a_revision() {
    let h = fixture();
    let evs = h.mvcc.events_since(7, &all(), 1).unwrap().unwrap();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].kv.mod_revision, 7);
    // Revision 8 has two events: a limit of 2 from 7 must bring both.
    let evs = h.mvcc.events_since(7, &all(), 2).unwrap().unwrap();
    assert_eq!(
        evs.iter().map(|e| e.kv.mod_revision).collect::<Vec<_>>(),
        [7, 8, 8]
    );
    let evs = h.mvcc.events_since(8, &all(), 1).unwrap().unwrap();
    assert_eq!(evs.len(), 2);
    // Limit counts matching events only.
    let evs = h
        .mvcc
        .events_since(2, &KeyRange::single("c"), 1)
        .unwrap()
        .unwrap();
    assert_eq!(
        evs.iter().map(|e| e.kv.mod_revision).collect::<Vec<_>>(),
        [8]
    );
}

#[test]
fn events_since_below_the_compact_revision_is_compacted() {
    let mut h = fixture();
    h.apply(Command::Compact { revision: 6 });
    assert_eq!(
        h.mvcc.events_since(5, &all(), 0).unwrap(),
        Err(ApplyError::Compacted {
            compact_revision: 6
        })
    );
    let evs = h.mvcc.events_since(6, &all(), 0).unwrap().unwrap();
    assert_eq!(
        evs.iter().map(|e| e.kv.mod_revision).collect::<Vec<_>>(),
        [6, 7, 8, 8]
    );
    // The event at the compact revision lost its prev_kv (compacted); later ones keep theirs.
    assert_eq!(evs[0].prev_kv, None);
    assert_eq!(evs[3].prev_kv.as_ref().unwrap().value, b"b2");
    assert_eq!(h.mvcc.events_since(0, &all(), 0).unwrap().unwrap().len(), 4);
}

#[test]
fn reopen_restores_identical_state() {
    let mut h = fixture();
    h.grant(1, 10);
    h.grant(2, 20);
    h.apply(Command::Put(PutRequest {
        lease: 1,
        ..put_req("l1", "v")
    })); // 9
    h.apply(Command::Put(PutRequest {
        lease: 2,
        ..put_req("l2", "v")
    })); // 10
    h.apply(Command::Compact { revision: 6 });
    h.delete(KeyRange::single("c")); // 11
    h.finish_compaction();

    let index = h.mvcc.index.clone();
    let leases = h.mvcc.leases();
    let reads: Vec<_> = (6..=11).map(|r| h.all_at(r)).collect();
    let events = h.mvcc.events_since(6, &all(), 0).unwrap().unwrap();

    h.reopen();
    assert_eq!(h.rev(), 11);
    assert_eq!(h.mvcc.compact_revision(), 6);
    assert_eq!(h.mvcc.key_count(), 4);
    assert_eq!(h.mvcc.index, index);
    assert_eq!(h.mvcc.leases(), leases);
    assert_eq!((6..=11).map(|r| h.all_at(r)).collect::<Vec<_>>(), reads);
    assert_eq!(h.mvcc.events_since(6, &all(), 0).unwrap().unwrap(), events);
    assert_eq!(
        h.range(muster_types::RangeRequest {
            revision: 5,
            ..Default::default()
        }),
        Err(ApplyError::Compacted {
            compact_revision: 6
        })
    );
    // And it carries on from there.
    assert_eq!(h.put("c", "again").revision, 12);
    assert_eq!(h.get("c").unwrap().create_revision, 12);
}

#[test]
fn group_applied_as_one_batch_is_durable_only_with_the_batch() {
    let mut h = H::new();
    h.put("a", "1"); // 2
    let mut batch = sled::Batch::default();
    let mut events = Vec::new();
    h.mvcc
        .apply(0, &Command::Put(put_req("a", "2")), &mut batch, &mut events)
        .unwrap();
    h.mvcc
        .apply(0, &Command::Put(put_req("b", "1")), &mut batch, &mut events)
        .unwrap();
    // In memory the group is visible at once…
    assert_eq!(h.rev(), 4);
    assert_eq!(h.get("a").unwrap().value, b"2");
    // …but a store reopened before the batch is applied is still at revision 2.
    let before = super::Mvcc::open(h.tree.clone()).unwrap();
    assert_eq!(before.current_revision(), 2);
    assert_eq!(before.key_count(), 1);
    h.tree.apply_batch(batch).unwrap();
    h.reopen();
    assert_eq!(h.rev(), 4);
    assert_eq!(h.all_at(0), kv_pairs(&[("a", "2"), ("b", "1")]));
    assert_eq!(h.all_at(3), kv_pairs(&[("a", "2")]));
}

#[test]
fn pending_records_are_read_with_the_tree_until_the_batch_is_persisted() {
    let mut h = H::new();
    h.put("a", "0"); // revision 2, in the tree
    let mut events = Vec::new();
    let mut batch = sled::Batch::default();
    h.mvcc
        .apply(0, &Command::Put(put_req("a", "1")), &mut batch, &mut events)
        .unwrap();
    h.mvcc
        .apply(0, &Command::Put(put_req("b", "1")), &mut batch, &mut events)
        .unwrap();
    assert_eq!(h.mvcc.history.pending_len(), 2);
    // A later group before the batch is written keeps them pending…
    h.mvcc
        .apply(
            0,
            &Command::LeaseGrant { id: 1, ttl_secs: 5 },
            &mut batch,
            &mut events,
        )
        .unwrap();
    assert_eq!(h.mvcc.history.pending_len(), 2);
    // …and history reads see the tree's record followed by the pending ones, in order.
    let all = KeyRange::new(vec![0u8], vec![0u8]); // key \0 .. everything (etcd: range_end \0)
    let seen: Vec<(Vec<u8>, i64)> = h
        .mvcc
        .events_since(0, &all, 0)
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|e| (e.kv.key, e.kv.mod_revision))
        .collect();
    assert_eq!(
        seen,
        vec![(b"a".to_vec(), 2), (b"a".to_vec(), 3), (b"b".to_vec(), 4)]
    );
    assert_eq!(h.all_at(3), kv_pairs(&[("a", "1")]));
    h.tree.apply_batch(batch).unwrap();
    h.mvcc.persisted();
    assert_eq!(h.mvcc.history.pending_len(), 0);
    let mut batch = sled::Batch::default();
    h.mvcc
        .apply(0, &Command::Put(put_req("c", "1")), &mut batch, &mut events)
        .unwrap();
    assert_eq!(h.mvcc.history.pending_len(), 1);
    h.tree.apply_batch(batch).unwrap();
    h.mvcc.persisted();
    h.reopen();
    assert_eq!(h.all_at(4), kv_pairs(&[("a", "1"), ("b", "1")]));
    assert_eq!(h.mvcc.leases().len(), 1);
}
