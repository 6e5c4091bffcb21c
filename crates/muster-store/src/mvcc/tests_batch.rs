//! `Command::Batch` (the leader's proposal batching): each command of a batch applies exactly
//! as if it were its own entry — own revision, own response, own events — and one command's
//! domain failure leaves the others alone.
#![allow(clippy::unwrap_used)]

use muster_types::{ApplyError, Command, EventKind, PutRequest, ResponseBody};

use super::test_util::*;

fn batch_responses(r: muster_types::CommandResponse) -> Vec<muster_types::CommandResponse> {
    match r.result {
        Ok(ResponseBody::Batch(rs)) => rs,
        other => panic!("expected a batch response, got {other:?}"),
    }
}

#[test]
fn each_command_of_a_batch_gets_its_own_revision_in_order() {
    let mut h = H::new();
    let before = h.rev();
    let r = h.apply(Command::Batch(vec![
        Command::Put(put_req("a", "1")),
        Command::Put(put_req("b", "2")),
        Command::Put(put_req("a", "3")),
    ]));
    assert_eq!(r.revision, before + 3);
    let rs = batch_responses(r);
    let revs: Vec<i64> = rs.iter().map(|r| r.revision).collect();
    assert_eq!(revs, vec![before + 1, before + 2, before + 3]);
    let a = h.get("a").unwrap();
    assert_eq!(
        (a.value.as_slice(), a.mod_revision, a.version),
        (&b"3"[..], before + 3, 2)
    );
    assert_eq!(h.get_at("a", before + 2).unwrap().value, b"1");
    let ev: Vec<(i64, EventKind)> = h
        .events
        .iter()
        .map(|e| (e.kv.mod_revision, e.kind))
        .collect();
    assert_eq!(
        ev,
        vec![
            (before + 1, EventKind::Put),
            (before + 2, EventKind::Put),
            (before + 3, EventKind::Put)
        ]
    );
}

#[test]
fn a_failing_command_in_a_batch_changes_nothing_and_spends_no_revision() {
    let mut h = H::new();
    let before = h.rev();
    let with_missing_lease = PutRequest {
        lease: 42,
        ..put_req("x", "no")
    };
    let rs = batch_responses(h.apply(Command::Batch(vec![
        Command::Put(put_req("a", "1")),
        Command::Put(with_missing_lease),
        Command::Put(put_req("b", "2")),
    ])));
    assert_eq!(rs[0].revision, before + 1);
    assert_eq!(rs[1].result, Err(ApplyError::LeaseNotFound { id: 42 }));
    assert_eq!(rs[1].revision, before + 1);
    assert_eq!(rs[2].revision, before + 2);
    assert!(h.get("x").is_none());
    assert_eq!(h.rev(), before + 2);
}

#[test]
fn a_repeated_request_id_inside_a_batch_applies_once() {
    let mut h = H::new();
    let once = |v: &str| Command::Idempotent {
        request_id: "req-1".into(),
        cmd: Box::new(Command::Put(put_req("k", v))),
    };
    let rs = batch_responses(h.apply(Command::Batch(vec![once("v"), once("v")])));
    assert_eq!(rs[0], rs[1]);
    assert_eq!(h.get("k").unwrap().version, 1);
    // The record outlives the batch: a later retry still replays the first answer.
    assert_eq!(h.apply(once("v")), rs[0]);
    assert_eq!(h.get("k").unwrap().version, 1);
}

#[test]
fn a_batch_survives_reopen_like_single_entries() {
    let mut h = H::new();
    h.apply(Command::Batch(vec![
        Command::Put(put_req("a", "1")),
        Command::Put(put_req("b", "2")),
    ]));
    let rev = h.rev();
    h.reopen();
    assert_eq!(h.rev(), rev);
    assert_eq!(h.get("b").unwrap().mod_revision, rev);
}
