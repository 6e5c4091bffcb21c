//! Fail-stop storage: a failed write of the state machine's deferred batch must neither lose
//! applied state nor let the store carry on. Regression tests for a bug where the batch was
//! taken before it was written: a failed write dropped it, a later write recorded a newer
//! applied log id, and after a restart the dropped entries were missing for good (openraft does
//! not re-apply entries at or below the applied id).
#![allow(clippy::unwrap_used)]

use openraft::RaftSnapshotBuilder;

use super::test_util::{big, key, small, wait_until, Sm};

/// After a restart every entry at or below the recorded applied index must be in the store, and
/// none above it (openraft re-applies those from the log; finding one already there would apply
/// it twice). Entries `1..=last` each put `key(index)`.
async fn assert_store_matches_applied_id(h: &mut Sm, last: u64) {
    h.reopen();
    let applied = h.last_applied().await.map_or(0, |l| l.index);
    for index in 1..=last {
        let present = h.get(&key(index)).is_some();
        assert_eq!(
            present,
            index <= applied,
            "after restart: entry {index} is {} but the recorded applied index is {applied}",
            if present { "present" } else { "missing" },
        );
    }
}

#[tokio::test]
async fn failed_write_at_apply_keeps_state_and_stops() {
    let mut h = Sm::new();
    h.apply((1..=3).map(small).collect()).await.unwrap();
    h.shared().inject_write_failures(1);
    // Entry 4 reaches the byte bound: apply writes the batch, and the write fails.
    assert!(h.apply(vec![big(4)]).await.is_err());

    for index in 1..=4 {
        assert!(
            h.get(&key(index)).is_some(),
            "entry {index} was applied: it must stay readable after the failed write"
        );
    }
    assert!(
        h.apply(vec![small(5)]).await.is_err(),
        "apply after a failed write must fail (fail-stop), not carry on"
    );
    assert!(
        h.get(&key(5)).is_none(),
        "a refused apply must change nothing"
    );
    assert!(
        h.sm.build_snapshot().await.is_err(),
        "a snapshot after a failed write must fail"
    );
    assert_store_matches_applied_id(&mut h, 5).await;
}

#[tokio::test]
async fn restart_after_failed_write_never_skips_entries() {
    let mut h = Sm::new();
    // Entry 1 is written; 2 and 3 wait in the batch; writing them with 4 fails.
    h.apply(vec![big(1)]).await.unwrap();
    h.apply(vec![small(2), small(3)]).await.unwrap();
    h.shared().inject_write_failures(1);
    let _ = h.apply(vec![big(4)]).await;
    // A store that carried on would write entry 5 with an applied id past the lost 2..=4.
    let _ = h.apply(vec![big(5)]).await;
    assert_store_matches_applied_id(&mut h, 5).await;
}

#[tokio::test]
async fn failed_write_by_ticker_stops_the_state_machine() {
    let mut h = Sm::new();
    h.apply((1..=3).map(small).collect()).await.unwrap();
    let shared = h.shared();
    shared.inject_write_failures(1);
    // Nothing else is applied: the ticker writes the batch once it is due, and fails.
    wait_until("the ticker tried to write", || {
        shared.injected_write_failures_left() == 0
    })
    .await;
    drop(shared);

    for index in 1..=3 {
        assert!(
            h.get(&key(index)).is_some(),
            "entry {index} must stay readable"
        );
    }
    assert!(
        h.apply(vec![small(4)]).await.is_err(),
        "apply after the ticker's failed write must fail (fail-stop)"
    );
    assert_store_matches_applied_id(&mut h, 4).await;
}
