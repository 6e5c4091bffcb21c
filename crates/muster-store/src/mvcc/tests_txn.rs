//! Txn: compares, branches, one revision for many writes, reads of its own writes, nesting,
//! checks that fail the whole txn.
#![allow(clippy::unwrap_used)]

use muster_types::{
    ApplyError, Command, CompareResult::*, CompareTarget::*, EventKind, KeyRange, PutRequest,
    RangeRequest, Revision, TxnOp, TxnOpResponse, TxnRequest,
};

use super::codec::{decode_history, history_key};
use super::test_util::*;

/// Runs a txn whose only compare is `c` (branches write nothing) and says which branch ran.
fn holds(h: &mut H, c: muster_types::Compare) -> bool {
    let (_, r) = h.txn(TxnRequest {
        compare: vec![c],
        ..Default::default()
    });
    r.unwrap().succeeded
}

#[test]
fn many_writes_share_one_revision_with_ordered_subs() {
    let mut h = H::new();
    h.put("c", "old"); // 2
    h.events.clear();
    let (rev, r) = h.txn(TxnRequest {
        success: vec![
            put_op("b", "1"),
            put_op("a", "1"),
            del_op(KeyRange::single("c")),
        ],
        ..Default::default()
    });
    assert_eq!(rev, 3);
    assert!(r.unwrap().succeeded);
    assert_eq!(
        h.events
            .iter()
            .map(|e| (s(&e.kv.key), e.kv.mod_revision))
            .collect::<Vec<_>>(),
        [
            ("b".to_string(), 3),
            ("a".to_string(), 3),
            ("c".to_string(), 3)
        ]
    );
    assert_eq!(h.events[2].kind, EventKind::Delete);
    // On disk: sub-revisions 0, 1, 2 in op order.
    for (sub, key) in ["b", "a", "c"].iter().enumerate() {
        let bytes = h
            .tree
            .get(history_key(Revision {
                main: 3,
                sub: sub as u32,
            }))
            .unwrap()
            .unwrap();
        assert_eq!(decode_history(&bytes).unwrap().kv.key, key.as_bytes());
    }
    let a = h.get("a").unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (3, 3, 1));
    assert_eq!(h.put("z", "1").revision, 4);
}

#[test]
fn txn_reads_its_own_writes() {
    let mut h = H::new();
    h.put("a", "old"); // 2
    let (rev, r) = h.txn(TxnRequest {
        success: vec![
            get_op(KeyRange::single("a")),
            put_op("a", "new"),
            get_op(KeyRange::prefix("")),
            del_op(KeyRange::single("a")),
            get_op(KeyRange::single("a")),
            // An explicit revision reads history as of before the txn.
            TxnOp::Range(RangeRequest {
                range: KeyRange::single("a"),
                revision: 2,
                ..Default::default()
            }),
        ],
        ..Default::default()
    });
    assert_eq!(rev, 3);
    let r = r.unwrap();
    assert_eq!(values(range_resp(&r.responses[0])), ["old"]);
    let after_put = range_resp(&r.responses[2]);
    assert_eq!(values(after_put), ["new"]);
    assert_eq!(
        (after_put.kvs[0].mod_revision, after_put.kvs[0].version),
        (3, 2)
    );
    assert_eq!(range_resp(&r.responses[4]).count, 0);
    assert_eq!(values(range_resp(&r.responses[5])), ["old"]);
}

#[test]
fn old_revision_read_inside_a_txn_sees_writes_of_the_same_unapplied_group() {
    let mut h = H::new();
    let rs = h.apply_group(vec![
        Command::Put(put_req("a", "1")), // 2
        Command::Put(put_req("a", "2")), // 3
        Command::Txn(TxnRequest {
            success: vec![
                put_op("a", "3"), // 4
                TxnOp::Range(RangeRequest {
                    range: KeyRange::single("a"),
                    revision: 2,
                    ..Default::default()
                }),
                TxnOp::Range(RangeRequest {
                    range: KeyRange::single("a"),
                    revision: 3,
                    ..Default::default()
                }),
            ],
            ..Default::default()
        }),
    ]);
    let muster_types::ResponseBody::Txn(t) = rs[2].result.clone().unwrap() else {
        panic!("not a txn")
    };
    assert_eq!(values(range_resp(&t.responses[1])), ["1"]);
    assert_eq!(values(range_resp(&t.responses[2])), ["2"]);
    assert_eq!(h.get_at("a", 2).unwrap().value, b"1");
    assert_eq!(h.get("a").unwrap().value, b"3");
}

#[test]
fn compares_every_target_and_result() {
    let mut h = H::new();
    h.grant(9, 60);
    h.put("x", "filler"); // 2
    h.apply(Command::Put(PutRequest {
        lease: 9,
        ..put_req("k", "m")
    })); // 3: create 3, version 1
    h.put("k", "m"); // 4: mod 4, version 2, lease 0
    h.put_lease("k", "m", 9); // 5: mod 5, version 3, lease 9
                              // VERSION = 3
    assert!(holds(&mut h, cmp("k", Equal, Version(3))));
    assert!(!holds(&mut h, cmp("k", Equal, Version(2))));
    assert!(holds(&mut h, cmp("k", Greater, Version(2))));
    assert!(holds(&mut h, cmp("k", Less, Version(4))));
    assert!(holds(&mut h, cmp("k", NotEqual, Version(1))));
    assert!(!holds(&mut h, cmp("k", NotEqual, Version(3))));
    // CREATE = 3, MOD = 5
    assert!(holds(&mut h, cmp("k", Equal, Create(3))));
    assert!(holds(&mut h, cmp("k", Less, Create(4))));
    assert!(!holds(&mut h, cmp("k", Greater, Create(3))));
    assert!(holds(&mut h, cmp("k", Equal, Mod(5))));
    assert!(holds(&mut h, cmp("k", Greater, Mod(4))));
    assert!(!holds(&mut h, cmp("k", Less, Mod(5))));
    // VALUE = "m" (byte order)
    assert!(holds(&mut h, cmp("k", Equal, Value(b"m".to_vec()))));
    assert!(holds(&mut h, cmp("k", Greater, Value(b"l".to_vec()))));
    assert!(holds(&mut h, cmp("k", Less, Value(b"ma".to_vec()))));
    assert!(holds(&mut h, cmp("k", NotEqual, Value(b"n".to_vec()))));
    assert!(!holds(&mut h, cmp("k", Equal, Value(b"".to_vec()))));
    // LEASE = 9
    assert!(holds(&mut h, cmp("k", Equal, Lease(9))));
    assert!(holds(&mut h, cmp("k", Greater, Lease(0))));
    assert!(!holds(&mut h, cmp("k", NotEqual, Lease(9))));
    // Compares are a conjunction.
    let (_, r) = h.txn(TxnRequest {
        compare: vec![cmp("k", Equal, Version(3)), cmp("k", Equal, Mod(1))],
        ..Default::default()
    });
    assert!(!r.unwrap().succeeded);
    // Compare-only txns wrote nothing.
    assert_eq!(h.rev(), 5);
}

#[test]
fn compares_on_a_missing_key_follow_etcd() {
    let mut h = H::new();
    // VERSION/CREATE/MOD/LEASE compare against 0 (put-if-absent is `create == 0`).
    assert!(holds(&mut h, cmp("nope", Equal, Version(0))));
    assert!(holds(&mut h, cmp("nope", Equal, Create(0))));
    assert!(holds(&mut h, cmp("nope", Equal, Mod(0))));
    assert!(holds(&mut h, cmp("nope", Less, Mod(1))));
    assert!(holds(&mut h, cmp("nope", Equal, Lease(0))));
    assert!(!holds(&mut h, cmp("nope", NotEqual, Lease(0))));
    // VALUE on a missing key is always false, whatever the result.
    assert!(!holds(&mut h, cmp("nope", Equal, Value(vec![]))));
    assert!(!holds(&mut h, cmp("nope", NotEqual, Value(b"x".to_vec()))));
    // A deleted key is missing too.
    h.put("gone", "v");
    h.delete(KeyRange::single("gone"));
    assert!(holds(&mut h, cmp("gone", Equal, Version(0))));
}

#[test]
fn range_compares_need_every_key() {
    let mut h = H::new();
    h.put("p/a", "1");
    h.put("p/b", "1");
    h.put("q", "2");
    let prefix = |result, target| muster_types::Compare {
        result,
        target,
        range: KeyRange::prefix("p/"),
    };
    assert!(holds(&mut h, prefix(Equal, Value(b"1".to_vec()))));
    assert!(holds(&mut h, prefix(Equal, Version(1))));
    h.put("p/b", "2");
    assert!(!holds(&mut h, prefix(Equal, Value(b"1".to_vec()))));
    assert!(!holds(&mut h, prefix(Equal, Version(1))));
    assert!(holds(&mut h, prefix(Greater, Version(0))));
    // An empty range compares like a missing key.
    let empty = |result, target| muster_types::Compare {
        result,
        target,
        range: KeyRange::prefix("none/"),
    };
    assert!(holds(&mut h, empty(Equal, Create(0))));
    assert!(!holds(&mut h, empty(Equal, Value(vec![]))));
}

#[test]
fn failure_branch_runs_when_a_compare_fails() {
    let mut h = H::new();
    // Put-if-absent, twice.
    let t = TxnRequest {
        compare: vec![cmp("lock", Equal, Create(0))],
        success: vec![put_op("lock", "me")],
        failure: vec![get_op(KeyRange::single("lock"))],
    };
    let (rev, r) = h.txn(t.clone());
    assert_eq!((rev, r.unwrap().succeeded), (2, true));
    let (rev, r) = h.txn(t);
    let r = r.unwrap();
    assert_eq!((rev, r.succeeded), (2, false));
    assert_eq!(values(range_resp(&r.responses[0])), ["me"]);
}

#[test]
fn txn_without_effective_writes_keeps_the_revision() {
    let mut h = H::new();
    h.put("a", "1"); // 2
    h.events.clear();
    let (rev, r) = h.txn(TxnRequest {
        success: vec![
            del_op(KeyRange::prefix("none/")),
            get_op(KeyRange::single("a")),
        ],
        ..Default::default()
    });
    assert_eq!(rev, 2);
    assert!(r.unwrap().succeeded);
    assert!(h.events.is_empty());
}

#[test]
fn nested_txns_decide_their_branch_before_the_outer_writes() {
    let mut h = H::new();
    let (rev, r) = h.txn(TxnRequest {
        success: vec![
            put_op("a", "1"),
            // Evaluated against the state before the outer txn, as etcd does: "a" is missing.
            TxnOp::Txn(TxnRequest {
                compare: vec![cmp("a", Equal, Version(0))],
                success: vec![put_op("saw", "missing")],
                failure: vec![put_op("saw", "present")],
            }),
            TxnOp::Txn(TxnRequest {
                compare: vec![cmp("a", Equal, Version(1))],
                success: vec![put_op("b", "never")],
                failure: vec![get_op(KeyRange::single("a"))],
            }),
        ],
        ..Default::default()
    });
    assert_eq!(rev, 2);
    let r = r.unwrap();
    let TxnOpResponse::Txn(first) = &r.responses[1] else {
        panic!("not a txn")
    };
    let TxnOpResponse::Txn(second) = &r.responses[2] else {
        panic!("not a txn")
    };
    assert!(first.succeeded);
    assert!(!second.succeeded);
    // The nested Range still sees the outer txn's earlier write.
    assert_eq!(values(range_resp(&second.responses[0])), ["1"]);
    assert_eq!(h.get("saw").unwrap().value, b"missing");
    assert!(h.get("b").is_none());
    // All writes, nested included, share the revision.
    assert_eq!(h.get("saw").unwrap().mod_revision, 2);
}

#[test]
fn a_failed_check_fails_the_whole_txn_and_changes_nothing() {
    let mut h = H::new();
    h.put("a", "1"); // 2
    h.events.clear();
    let unknown_lease = TxnOp::Put(PutRequest {
        lease: 42,
        ..put_req("b", "1")
    });
    let (rev, r) = h.txn(TxnRequest {
        success: vec![put_op("c", "1"), unknown_lease],
        ..Default::default()
    });
    assert_eq!((rev, r), (2, Err(ApplyError::LeaseNotFound { id: 42 })));

    let missing = TxnOp::Put(PutRequest {
        ignore_value: true,
        ..put_req("missing", "")
    });
    let nested = TxnOp::Txn(TxnRequest {
        success: vec![missing],
        ..Default::default()
    });
    let (rev, r) = h.txn(TxnRequest {
        success: vec![put_op("c", "1"), nested],
        ..Default::default()
    });
    assert_eq!((rev, r), (2, Err(ApplyError::KeyNotFound)));

    let future = TxnOp::Range(RangeRequest {
        range: KeyRange::single("a"),
        revision: 3,
        ..Default::default()
    });
    let (rev, r) = h.txn(TxnRequest {
        success: vec![put_op("c", "1"), future],
        ..Default::default()
    });
    assert_eq!(
        (rev, r),
        (
            2,
            Err(ApplyError::FutureRevision {
                current_revision: 2
            })
        )
    );

    // Only the chosen branch is checked.
    let bad = TxnOp::Put(PutRequest {
        lease: 42,
        ..put_req("b", "1")
    });
    let (rev, r) = h.txn(TxnRequest {
        compare: vec![cmp("a", Equal, Version(1))],
        success: vec![put_op("c", "1")],
        failure: vec![bad],
    });
    assert_eq!(rev, 3);
    assert!(r.unwrap().succeeded);
    assert_eq!(h.all_at(0).len(), 2);
    assert_eq!(h.events.len(), 1);
}

#[test]
fn txn_put_with_ignore_flags_and_lease() {
    let mut h = H::new();
    h.grant(5, 10);
    h.put("a", "v"); // 2
    let (rev, r) = h.txn(TxnRequest {
        success: vec![TxnOp::Put(PutRequest {
            ignore_value: true,
            lease: 5,
            prev_kv: true,
            ..put_req("a", "")
        })],
        ..Default::default()
    });
    assert_eq!(rev, 3);
    let TxnOpResponse::Put(p) = &r.unwrap().responses[0] else {
        panic!("not a put")
    };
    assert_eq!(p.prev_kv.as_ref().unwrap().mod_revision, 2);
    let a = h.get("a").unwrap();
    assert_eq!((a.value.as_slice(), a.lease), (b"v".as_slice(), 5));
    assert_eq!(h.mvcc.lease(5).unwrap().keys, vec![b"a".to_vec()]);
}
