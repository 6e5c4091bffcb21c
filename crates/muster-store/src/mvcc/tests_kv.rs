//! Put and DeleteRange: revision, version, create/mod revision rules, events, no-op requests.
#![allow(clippy::unwrap_used)]

use muster_types::{
    ApplyError, Command, DeleteRangeResponse, EventKind, KeyRange, KeyValue, PutRequest,
    PutResponse, ResponseBody,
};

use super::test_util::*;

#[test]
fn empty_store_is_revision_one() {
    let h = H::new();
    assert_eq!(h.rev(), 1);
    assert_eq!(h.mvcc.compact_revision(), 0);
    assert_eq!(h.mvcc.key_count(), 0);
    assert!(h.all_at(0).is_empty());
}

#[test]
fn put_sets_create_mod_and_version() {
    let mut h = H::new();
    let r = h.put("a", "1");
    assert_eq!(r.revision, 2);
    assert_eq!(
        r.result,
        Ok(ResponseBody::Put(PutResponse { prev_kv: None }))
    );
    let a = h.get("a").unwrap();
    assert_eq!(
        a,
        KeyValue {
            key: b"a".to_vec(),
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            value: b"1".to_vec(),
            lease: 0
        }
    );

    assert_eq!(h.put("b", "x").revision, 3);
    assert_eq!(h.put("a", "2").revision, 4);
    let a = h.get("a").unwrap();
    assert_eq!(
        (a.create_revision, a.mod_revision, a.version, a.value),
        (2, 4, 2, b"2".to_vec())
    );
    assert_eq!(h.mvcc.key_count(), 2);
}

#[test]
fn put_returns_prev_kv_only_when_asked() {
    let mut h = H::new();
    h.put("a", "1");
    let before = h.get("a");
    let r = h.apply(Command::Put(PutRequest {
        prev_kv: true,
        ..put_req("a", "2")
    }));
    assert_eq!(
        r.result,
        Ok(ResponseBody::Put(PutResponse { prev_kv: before }))
    );
    let r = h.apply(Command::Put(put_req("a", "3")));
    assert_eq!(
        r.result,
        Ok(ResponseBody::Put(PutResponse { prev_kv: None }))
    );
    // A new key has no prev_kv even when asked.
    let r = h.apply(Command::Put(PutRequest {
        prev_kv: true,
        ..put_req("new", "1")
    }));
    assert_eq!(
        r.result,
        Ok(ResponseBody::Put(PutResponse { prev_kv: None }))
    );
}

#[test]
fn delete_then_put_starts_a_new_generation() {
    let mut h = H::new();
    h.put("a", "1"); // 2
    h.put("a", "2"); // 3
    let r = h.delete(KeyRange::single("a")); // 4
    assert_eq!(r.revision, 4);
    assert!(h.get("a").is_none());
    assert_eq!(h.mvcc.key_count(), 0);
    h.put("a", "3"); // 5
    let a = h.get("a").unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (5, 5, 1));
}

#[test]
fn delete_range_deletes_in_key_order_with_one_revision() {
    let mut h = H::new();
    for k in ["a", "b", "c", "d"] {
        h.put(k, k); // 2..=5
    }
    h.events.clear();
    let r = h.delete(KeyRange::new("b", "d"));
    assert_eq!(r.revision, 6);
    let ResponseBody::DeleteRange(DeleteRangeResponse { deleted, prev_kvs }) = r.result.unwrap()
    else {
        panic!("not a delete response")
    };
    assert_eq!(deleted, 2);
    assert_eq!(
        prev_kvs.iter().map(|kv| s(&kv.value)).collect::<Vec<_>>(),
        ["b", "c"]
    );
    assert_eq!(
        h.all_at(0),
        [("a".into(), "a".into()), ("d".into(), "d".into())]
    );

    // DELETE events: the key and the deletion revision only, prev_kv = the deleted value.
    assert_eq!(h.events.len(), 2);
    for (e, key) in h.events.iter().zip(["b", "c"]) {
        assert_eq!(e.kind, EventKind::Delete);
        assert_eq!(
            e.kv,
            KeyValue {
                key: key.into(),
                mod_revision: 6,
                ..Default::default()
            }
        );
        assert_eq!(e.prev_kv.as_ref().unwrap().value, key.as_bytes());
    }
}

#[test]
fn delete_range_without_prev_kv_returns_none() {
    let mut h = H::new();
    h.put("a", "1");
    let r = h.apply(Command::DeleteRange(muster_types::DeleteRangeRequest {
        range: KeyRange::single("a"),
        prev_kv: false,
    }));
    assert_eq!(
        r.result,
        Ok(ResponseBody::DeleteRange(DeleteRangeResponse {
            deleted: 1,
            prev_kvs: vec![]
        }))
    );
}

#[test]
fn put_events_carry_new_and_previous_values() {
    let mut h = H::new();
    h.put("a", "1");
    h.put("a", "2");
    assert_eq!(h.events.len(), 2);
    assert_eq!(h.events[0].kind, EventKind::Put);
    assert_eq!(h.events[0].kv.version, 1);
    assert_eq!(h.events[0].prev_kv, None);
    assert_eq!(h.events[1].kv.value, b"2");
    assert_eq!(h.events[1].prev_kv.as_ref().unwrap().value, b"1");
    assert_eq!(h.events[1].kv.mod_revision, 3);
}

#[test]
fn requests_that_change_nothing_keep_the_revision() {
    let mut h = H::new();
    h.put("a", "1"); // 2
    h.events.clear();
    // DeleteRange matching nothing.
    let r = h.delete(KeyRange::prefix("zz"));
    assert_eq!(r.revision, 2);
    assert_eq!(
        r.result,
        Ok(ResponseBody::DeleteRange(DeleteRangeResponse::default()))
    );
    // Put with an unknown lease.
    let r = h.put_lease("a", "x", 77);
    assert_eq!(
        (r.revision, r.result),
        (2, Err(ApplyError::LeaseNotFound { id: 77 }))
    );
    // ignore_value on a missing key.
    let r = h.apply(Command::Put(PutRequest {
        ignore_value: true,
        ..put_req("missing", "")
    }));
    assert_eq!((r.revision, r.result), (2, Err(ApplyError::KeyNotFound)));
    let r = h.apply(Command::Put(PutRequest {
        ignore_lease: true,
        ..put_req("missing", "v")
    }));
    assert_eq!((r.revision, r.result), (2, Err(ApplyError::KeyNotFound)));
    // Lease grant.
    assert_eq!(h.grant(5, 10).revision, 2);
    assert!(h.events.is_empty());
    assert_eq!(h.get("a").unwrap().value, b"1");
    assert!(h.get("missing").is_none());
    // The next write gets the next revision: nothing was consumed.
    assert_eq!(h.put("b", "1").revision, 3);
}

#[test]
fn unknown_lease_is_checked_before_missing_key() {
    let mut h = H::new();
    let r = h.apply(Command::Put(PutRequest {
        ignore_value: true,
        lease: 9,
        ..put_req("missing", "")
    }));
    assert_eq!(r.result, Err(ApplyError::LeaseNotFound { id: 9 }));
}

#[test]
fn ignore_value_and_ignore_lease_keep_current_fields() {
    let mut h = H::new();
    h.grant(7, 30);
    h.grant(8, 30);
    h.put_lease("a", "v1", 7); // 2
                               // ignore_value: new lease, same value.
    let r = h.apply(Command::Put(PutRequest {
        ignore_value: true,
        lease: 8,
        ..put_req("a", "ignored")
    }));
    assert_eq!(r.revision, 3);
    let a = h.get("a").unwrap();
    assert_eq!((s(&a.value).as_str(), a.lease, a.version), ("v1", 8, 2));
    assert_eq!(h.mvcc.lease(7).unwrap().keys, Vec::<Vec<u8>>::new());
    assert_eq!(h.mvcc.lease(8).unwrap().keys, vec![b"a".to_vec()]);
    // ignore_lease: new value, same lease.
    let r = h.apply(Command::Put(PutRequest {
        ignore_lease: true,
        ..put_req("a", "v2")
    }));
    assert_eq!(r.revision, 4);
    let a = h.get("a").unwrap();
    assert_eq!((s(&a.value).as_str(), a.lease, a.version), ("v2", 8, 3));
    // A plain put without a lease detaches the key.
    h.put("a", "v3");
    assert_eq!(h.get("a").unwrap().lease, 0);
    assert!(h.mvcc.lease(8).unwrap().keys.is_empty());
}

#[test]
fn events_of_a_group_are_in_revision_order() {
    let mut h = H::new();
    let rs = h.apply_group(vec![
        Command::Put(put_req("b", "1")),
        Command::Put(put_req("a", "1")),
        Command::DeleteRange(muster_types::DeleteRangeRequest {
            range: KeyRange::single("b"),
            prev_kv: false,
        }),
    ]);
    assert_eq!(rs.iter().map(|r| r.revision).collect::<Vec<_>>(), [2, 3, 4]);
    let revs: Vec<i64> = h.events.iter().map(|e| e.kv.mod_revision).collect();
    assert_eq!(revs, [2, 3, 4]);
    // Later commands of the group saw earlier ones: "b" existed when the delete ran.
    assert_eq!(h.events[2].kind, EventKind::Delete);
    assert_eq!(h.events[2].prev_kv.as_ref().unwrap().value, b"1");
}

#[test]
fn callers_reserved_prefix_is_left_alone() {
    let mut h = H::new();
    h.tree.insert(b"sapplied", b"caller meta".to_vec()).unwrap();
    h.put("a", "1");
    h.reopen();
    assert_eq!(h.all_at(0), [("a".into(), "1".into())]);
    assert_eq!(
        h.tree.get(b"sapplied").unwrap().unwrap(),
        b"caller meta".as_slice()
    );
}
