//! Alarms: which writes a raised NOSPACE or CORRUPT stops at apply, that clearing lets them
//! through again, that alarms survive a reopen, and the quota's byte count.
#![allow(clippy::unwrap_used)]

use muster_types::{
    Alarm, AlarmAction, AlarmMember, ApplyError, Command, DeleteRangeRequest, KeyRange, PutRequest,
    ResponseBody, TxnOp, TxnRequest,
};

use super::test_util::{put_req, H};

fn alarm(action: AlarmAction, member_id: u64, alarm: Alarm) -> Command {
    Command::Alarm {
        action,
        member_id,
        alarm,
    }
}

fn refused(h: &mut H, cmd: Command) -> Option<ApplyError> {
    h.apply(cmd).result.err()
}

fn delete_txn(key: &str) -> Command {
    Command::Txn(TxnRequest {
        compare: vec![],
        success: vec![TxnOp::DeleteRange(DeleteRangeRequest {
            range: KeyRange::single(key),
            prev_kv: false,
        })],
        failure: vec![],
    })
}

#[test]
fn nospace_stops_what_takes_space_and_lets_deletes_through() {
    let mut h = H::new();
    h.put("a", "1");
    h.put("b", "1");
    h.grant(7, 60);
    let rev = h.rev();
    let r = h.apply(alarm(AlarmAction::Activate, 3, Alarm::NoSpace));
    let raised = AlarmMember {
        member_id: 3,
        alarm: Alarm::NoSpace,
    };
    assert_eq!(r.result, Ok(ResponseBody::Alarm(Some(raised))));
    assert_eq!(r.revision, rev, "an alarm takes no revision");
    assert_eq!(h.mvcc.alarms(), vec![raised]);
    // Raising it again changes nothing.
    let again = h.apply(alarm(AlarmAction::Activate, 3, Alarm::NoSpace));
    assert_eq!(again.result, Ok(ResponseBody::Alarm(None)));

    assert_eq!(
        refused(&mut h, Command::Put(put_req("c", "1"))),
        Some(ApplyError::NoSpace)
    );
    assert_eq!(
        refused(&mut h, Command::LeaseGrant { id: 8, ttl_secs: 5 }),
        Some(ApplyError::NoSpace)
    );
    let put_txn = Command::Txn(TxnRequest {
        compare: vec![],
        success: vec![],
        failure: vec![TxnOp::Put(put_req("c", "1"))],
    });
    assert_eq!(refused(&mut h, put_txn), Some(ApplyError::NoSpace));
    // A refused write inside a request id is not remembered: the retry after the clear applies.
    let once = Command::Put(put_req("d", "1")).idempotent(Some("req-1".into()));
    assert_eq!(refused(&mut h, once.clone()), Some(ApplyError::NoSpace));
    assert_eq!(h.rev(), rev, "nothing refused wrote");

    assert_eq!(
        refused(
            &mut h,
            Command::DeleteRange(DeleteRangeRequest {
                range: KeyRange::single("a"),
                prev_kv: false,
            })
        ),
        None
    );
    assert_eq!(refused(&mut h, delete_txn("b")), None);
    assert_eq!(refused(&mut h, Command::LeaseRevoke { id: 7 }), None);
    assert_eq!(refused(&mut h, Command::Compact { revision: rev }), None);

    let cleared = h.apply(alarm(AlarmAction::Deactivate, 3, Alarm::NoSpace));
    assert_eq!(cleared.result, Ok(ResponseBody::Alarm(Some(raised))));
    assert!(h.mvcc.alarms().is_empty());
    assert_eq!(refused(&mut h, once), None);
    assert!(h.get("d").is_some());
}

#[test]
fn corrupt_stops_every_client_write_but_not_expiry() {
    let mut h = H::new();
    h.grant(7, 60);
    h.put_lease("a", "1", 7);
    h.apply(alarm(AlarmAction::Activate, 2, Alarm::Corrupt));
    for cmd in [
        Command::Put(put_req("b", "1")),
        Command::DeleteRange(DeleteRangeRequest {
            range: KeyRange::single("a"),
            prev_kv: false,
        }),
        delete_txn("a"),
        Command::Compact { revision: 2 },
        Command::LeaseRevoke { id: 7 },
    ] {
        assert_eq!(
            refused(&mut h, cmd.clone()),
            Some(ApplyError::Corrupt),
            "{cmd:?}"
        );
    }
    // The leader's lease expiry is not a client's write.
    assert_eq!(refused(&mut h, Command::LeaseExpire { ids: vec![7] }), None);
    assert!(h.get("a").is_none());
    // CORRUPT and NOSPACE together: CORRUPT answers.
    h.apply(alarm(AlarmAction::Activate, 1, Alarm::NoSpace));
    assert_eq!(
        refused(&mut h, Command::Put(put_req("b", "1"))),
        Some(ApplyError::Corrupt)
    );
}

#[test]
fn alarms_survive_a_reopen() {
    let mut h = H::new();
    h.apply(alarm(AlarmAction::Activate, 1, Alarm::NoSpace));
    h.apply(alarm(AlarmAction::Activate, 2, Alarm::Corrupt));
    h.apply(alarm(AlarmAction::Activate, 3, Alarm::Corrupt));
    h.apply(alarm(AlarmAction::Deactivate, 3, Alarm::Corrupt));
    // Clearing an alarm that is not raised changes nothing.
    let none = h.apply(alarm(AlarmAction::Deactivate, 9, Alarm::NoSpace));
    assert_eq!(none.result, Ok(ResponseBody::Alarm(None)));
    let before = h.mvcc.alarms();
    h.reopen();
    assert_eq!(h.mvcc.alarms(), before);
    assert_eq!(before.len(), 2);
}

#[test]
fn space_used_grows_with_history_and_shrinks_with_compaction_and_reopens_equal() {
    let mut h = H::new();
    assert_eq!(h.mvcc.space_used(), 0);
    let value = "x".repeat(1_000);
    for _ in 0..10 {
        h.apply(Command::Put(PutRequest {
            key: b"k".to_vec(),
            value: value.clone().into_bytes(),
            ..Default::default()
        }));
    }
    let full = h.mvcc.space_used();
    assert!(full >= 10_000, "{full}");
    h.reopen();
    assert_eq!(
        h.mvcc.space_used(),
        full,
        "rebuilt from the records on open"
    );
    h.apply(Command::Compact { revision: h.rev() });
    h.finish_compaction();
    let after = h.mvcc.space_used();
    assert!(after < full / 5, "{after} of {full}");
    h.reopen();
    assert_eq!(h.mvcc.space_used(), after);
}
