//! Leases: grant, attach/detach through puts and deletes, revoke deleting every attached key in
//! one revision.
#![allow(clippy::unwrap_used)]

use muster_types::{ApplyError, Command, EventKind, KeyRange, ResponseBody};

use super::test_util::*;
use super::LeaseInfo;

fn keys_of(h: &H, id: i64) -> Vec<String> {
    h.mvcc
        .lease(id)
        .unwrap()
        .keys
        .iter()
        .map(|k| s(k))
        .collect()
}

#[test]
fn grant_and_list() {
    let mut h = H::new();
    let r = h.grant(7, 30);
    assert_eq!(
        (r.revision, r.result),
        (
            1,
            Ok(ResponseBody::LeaseGrant {
                id: 7,
                ttl_secs: 30
            })
        )
    );
    h.grant(3, 10);
    assert_eq!(
        h.grant(7, 99).result,
        Err(ApplyError::LeaseExists { id: 7 })
    );
    assert_eq!(
        h.grant(0, 10).result,
        Err(ApplyError::LeaseNotFound { id: 0 })
    );
    assert_eq!(
        h.mvcc.leases(),
        vec![
            LeaseInfo {
                id: 3,
                ttl_secs: 10,
                keys: vec![]
            },
            LeaseInfo {
                id: 7,
                ttl_secs: 30,
                keys: vec![]
            }
        ]
    );
    assert_eq!(h.mvcc.lease(4), None);
}

#[test]
fn puts_attach_move_and_deletes_detach() {
    let mut h = H::new();
    h.grant(1, 10);
    h.grant(2, 10);
    h.put_lease("a", "v", 1);
    h.put_lease("b", "v", 1);
    assert_eq!(keys_of(&h, 1), ["a", "b"]);
    // Moving "a" to lease 2.
    h.put_lease("a", "v", 2);
    assert_eq!(keys_of(&h, 1), ["b"]);
    assert_eq!(keys_of(&h, 2), ["a"]);
    // Deleting "b" detaches it.
    h.delete(KeyRange::single("b"));
    assert!(keys_of(&h, 1).is_empty());
    // A put with an unknown lease changes nothing, attachments included.
    assert_eq!(
        h.put_lease("a", "x", 9).result,
        Err(ApplyError::LeaseNotFound { id: 9 })
    );
    assert_eq!(keys_of(&h, 2), ["a"]);
    assert_eq!(h.get("a").unwrap().lease, 2);
}

#[test]
fn revoke_deletes_every_attached_key_in_one_revision() {
    let mut h = H::new();
    h.grant(1, 10);
    h.put_lease("c", "3", 1); // 2
    h.put_lease("a", "1", 1); // 3
    h.put("keep", "k"); // 4
    h.put_lease("b", "2", 1); // 5
    h.events.clear();
    let r = h.apply(Command::LeaseRevoke { id: 1 });
    assert_eq!((r.revision, r.result), (6, Ok(ResponseBody::LeaseRevoke)));
    assert_eq!(h.all_at(0), [("keep".into(), "k".into())]);
    assert_eq!(h.mvcc.lease(1), None);
    // One DELETE event per key, in key order, all at revision 6, with the deleted values.
    let got: Vec<(EventKind, String, i64, String)> = h
        .events
        .iter()
        .map(|e| {
            (
                e.kind,
                s(&e.kv.key),
                e.kv.mod_revision,
                s(&e.prev_kv.as_ref().unwrap().value),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (EventKind::Delete, "a".into(), 6, "1".into()),
            (EventKind::Delete, "b".into(), 6, "2".into()),
            (EventKind::Delete, "c".into(), 6, "3".into()),
        ]
    );
    // The keys are readable at the revision before.
    assert_eq!(h.all_at(5).len(), 4);
    // Revoked twice: not found.
    assert_eq!(
        h.apply(Command::LeaseRevoke { id: 1 }).result,
        Err(ApplyError::LeaseNotFound { id: 1 })
    );
}

#[test]
fn revoking_a_lease_without_keys_keeps_the_revision() {
    let mut h = H::new();
    h.put("a", "1"); // 2
    h.grant(1, 10);
    let r = h.apply(Command::LeaseRevoke { id: 1 });
    assert_eq!((r.revision, r.result), (2, Ok(ResponseBody::LeaseRevoke)));
    assert!(h.mvcc.leases().is_empty());
    assert_eq!(h.events.len(), 1);
    // The lease is gone on disk too.
    h.reopen();
    assert!(h.mvcc.leases().is_empty());
}

#[test]
fn leases_and_attachments_survive_reopen() {
    let mut h = H::new();
    h.grant(1, 10);
    h.grant(2, 20);
    h.put_lease("a", "1", 1);
    h.put_lease("b", "1", 2);
    h.put_lease("a", "2", 2);
    h.put_lease("c", "1", 1);
    h.delete(KeyRange::single("c"));
    let before = h.mvcc.leases();
    h.reopen();
    assert_eq!(h.mvcc.leases(), before);
    assert_eq!(keys_of(&h, 2), ["a", "b"]);
    assert!(keys_of(&h, 1).is_empty());
}

#[test]
fn expire_deletes_every_key_of_every_lease_in_one_revision() {
    let mut h = H::new();
    h.grant(1, 5);
    h.grant(2, 5);
    h.grant(3, 5);
    h.grant(4, 5);
    h.put_lease("b1", "x", 1); // 2
    h.put_lease("a2", "y", 2); // 3
    h.put_lease("c1", "z", 1); // 4
    h.put_lease("d4", "w", 4); // 5
    h.put("keep", "k"); // 6
    h.events.clear();
    // 9 does not exist, 2 is listed twice: both are skipped.
    let r = h.apply(Command::LeaseExpire {
        ids: vec![1, 9, 2, 3, 2],
    });
    assert_eq!(
        (r.revision, r.result),
        (
            7,
            Ok(ResponseBody::LeaseExpire {
                expired: vec![1, 2, 3]
            })
        )
    );
    // One revision for the batch; key order across leases; sub-revisions ascending.
    let got: Vec<(EventKind, String, i64)> = h
        .events
        .iter()
        .map(|e| (e.kind, s(&e.kv.key), e.kv.mod_revision))
        .collect();
    assert_eq!(
        got,
        [
            (EventKind::Delete, "a2".into(), 7),
            (EventKind::Delete, "b1".into(), 7),
            (EventKind::Delete, "c1".into(), 7),
        ]
    );
    assert_eq!(
        h.all_at(0),
        [("d4".into(), "w".into()), ("keep".into(), "k".into())]
    );
    assert_eq!(
        h.mvcc.lease_ttls(),
        vec![(4, 5)],
        "only the lease not listed is left"
    );
    // Everything was readable at the revision before.
    assert_eq!(h.all_at(6).len(), 5);
    // The removal is durable.
    h.reopen();
    assert_eq!(h.mvcc.lease_ttls(), vec![(4, 5)]);
    assert_eq!(h.all_at(0).len(), 2);
}

#[test]
fn expiring_only_unknown_or_keyless_leases_keeps_the_revision() {
    let mut h = H::new();
    h.put("a", "1"); // 2
    h.grant(1, 5);
    let r = h.apply(Command::LeaseExpire { ids: vec![7, 8] });
    assert_eq!(
        (r.revision, r.result),
        (2, Ok(ResponseBody::LeaseExpire { expired: vec![] }))
    );
    let r = h.apply(Command::LeaseExpire { ids: vec![1] });
    assert_eq!(
        (r.revision, r.result),
        (2, Ok(ResponseBody::LeaseExpire { expired: vec![1] }))
    );
    // A repeat of the same entry (a re-proposal after "commit status unknown") is harmless.
    let r = h.apply(Command::LeaseExpire { ids: vec![1] });
    assert_eq!(r.result, Ok(ResponseBody::LeaseExpire { expired: vec![] }));
    assert!(h.mvcc.leases().is_empty());
}

#[test]
fn expire_and_puts_in_one_apply_group_see_each_other() {
    // The Raft state machine applies several entries into one sled batch: a put after the
    // expiry in the same group must see the lease gone.
    let mut h = H::new();
    h.grant(1, 5);
    h.put_lease("a", "1", 1); // 2
    let out = h.apply_group(vec![
        Command::LeaseExpire { ids: vec![1] },
        Command::Put(muster_types::PutRequest {
            lease: 1,
            ..put_req("b", "2")
        }),
    ]);
    assert_eq!(out[0].revision, 3);
    assert_eq!(out[1].result, Err(ApplyError::LeaseNotFound { id: 1 }));
    assert!(h.get("a").is_none());
}

#[test]
fn lease_generation_moves_on_grant_and_removal_only() {
    let mut h = H::new();
    let g0 = h.mvcc.lease_generation();
    h.grant(1, 5);
    let g1 = h.mvcc.lease_generation();
    assert_ne!(g0, g1);
    h.put_lease("a", "1", 1);
    assert_eq!(
        h.mvcc.lease_generation(),
        g1,
        "attaching a key is not a lease change"
    );
    h.apply(Command::LeaseExpire { ids: vec![1] });
    assert_ne!(h.mvcc.lease_generation(), g1);
    assert_eq!(h.mvcc.lease_ttl(1), None);
}
