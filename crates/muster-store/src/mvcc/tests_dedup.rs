//! Request-id de-duplication: a repeated `Idempotent` command replays the first response and
//! changes nothing; records survive reopen (and so snapshots, which copy the same records) and
//! are forgotten by leader time, deterministically.
#![allow(clippy::unwrap_used)]

use muster_types::{ApplyError, Command, CommandResponse, ResponseBody, REQUEST_ID_RETENTION_MS};

use super::test_util::*;

fn once(request_id: &str, cmd: Command) -> Command {
    Command::Idempotent {
        request_id: request_id.into(),
        cmd: Box::new(cmd),
    }
}

/// Applies one command with the given leader time.
fn apply_at(h: &mut H, time_ms: u64, cmd: Command) -> CommandResponse {
    let mut batch = sled::Batch::default();
    let r = h
        .mvcc
        .apply(time_ms, &cmd, &mut batch, &mut h.events)
        .unwrap();
    h.tree.apply_batch(batch).unwrap();
    r
}

#[test]
fn a_repeated_grant_returns_the_first_answer_and_grants_once() {
    let mut h = H::new();
    let grant = Command::LeaseGrant { id: 7, ttl_secs: 5 };
    let first = h.apply(once("req-1", grant.clone()));
    assert_eq!(
        first.result,
        Ok(ResponseBody::LeaseGrant { id: 7, ttl_secs: 5 })
    );
    // Without a request id the retry would fail with LeaseExists; with it, the first answer.
    assert_eq!(h.apply(once("req-1", grant.clone())), first);
    assert_eq!(
        h.apply(grant).result,
        Err(ApplyError::LeaseExists { id: 7 })
    );
    assert_eq!(h.mvcc.lease_ttls(), vec![(7, 5)]);
}

#[test]
fn a_repeated_revoke_succeeds_again_without_touching_newer_state() {
    let mut h = H::new();
    h.grant(1, 5);
    h.put_lease("a", "1", 1); // 2
    let first = h.apply(once("rev-1", Command::LeaseRevoke { id: 1 }));
    assert_eq!(
        (first.revision, &first.result),
        (3, &Ok(ResponseBody::LeaseRevoke))
    );
    // A new lease with the same id and a new key, then the retry of the old revoke arrives.
    h.grant(1, 5);
    h.put_lease("b", "2", 1); // 4
    let again = h.apply(once("rev-1", Command::LeaseRevoke { id: 1 }));
    assert_eq!(again, first, "the first answer, with the first revision");
    assert_eq!(h.rev(), 4, "nothing applied");
    assert!(h.get("b").is_some(), "the new lease's key is untouched");
}

#[test]
fn failures_are_remembered_too() {
    let mut h = H::new();
    let first = h.apply(once("r", Command::LeaseRevoke { id: 9 }));
    assert_eq!(first.result, Err(ApplyError::LeaseNotFound { id: 9 }));
    h.grant(9, 5);
    assert_eq!(h.apply(once("r", Command::LeaseRevoke { id: 9 })), first);
    assert_eq!(h.mvcc.lease_ttls(), vec![(9, 5)]);
}

#[test]
fn reusing_a_request_id_for_another_request_fails() {
    let mut h = H::new();
    h.apply(once("r", Command::LeaseGrant { id: 1, ttl_secs: 5 }));
    let r = h.apply(once("r", Command::LeaseGrant { id: 1, ttl_secs: 6 }));
    assert_eq!(
        r.result,
        Err(ApplyError::RequestIdReused {
            request_id: "r".into()
        })
    );
    assert_eq!(h.mvcc.lease_ttls(), vec![(1, 5)]);
}

#[test]
fn records_survive_reopen() {
    let mut h = H::new();
    let first = h.apply(once("g", Command::LeaseGrant { id: 3, ttl_secs: 5 }));
    h.reopen();
    assert_eq!(h.mvcc.request_id_count(), 1);
    assert_eq!(
        h.apply(once("g", Command::LeaseGrant { id: 3, ttl_secs: 5 })),
        first
    );
}

#[test]
fn records_are_forgotten_by_leader_time_on_disk_too() {
    let mut h = H::new();
    let t0 = 1_000_000;
    apply_at(
        &mut h,
        t0,
        once("old", Command::LeaseGrant { id: 1, ttl_secs: 5 }),
    );
    apply_at(
        &mut h,
        t0 + 1_000,
        once("new", Command::LeaseGrant { id: 2, ttl_secs: 5 }),
    );
    // Exactly at the edge of the window both are kept.
    apply_at(
        &mut h,
        t0 + REQUEST_ID_RETENTION_MS,
        Command::Compact { revision: 1 },
    );
    assert_eq!(h.mvcc.request_id_count(), 2);
    apply_at(
        &mut h,
        t0 + REQUEST_ID_RETENTION_MS + 1,
        Command::LeaseRevoke { id: 5 },
    );
    assert_eq!(h.mvcc.request_id_count(), 1);
    h.reopen();
    assert_eq!(
        h.mvcc.request_id_count(),
        1,
        "pruned on disk in the same batch"
    );
    // Forgotten: the retry applies again (here: LeaseExists, as without a request id).
    let r = apply_at(
        &mut h,
        t0 + REQUEST_ID_RETENTION_MS + 2,
        once("old", Command::LeaseGrant { id: 1, ttl_secs: 5 }),
    );
    assert_eq!(r.result, Err(ApplyError::LeaseExists { id: 1 }));
}
