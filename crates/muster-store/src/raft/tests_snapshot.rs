//! Snapshot builds scan the tree without the state machine's lock, on a blocking thread, and
//! still capture exactly the state at the applied log id they record.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;
use tokio::time::timeout;
use tracing::info;

use super::test_util::{apply, big, key, small, Sm, DEADLINE};

const KEYS: u64 = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_scan_holds_no_lock_and_sees_its_applied_state() {
    let mut h = Sm::new();
    for first in (1..=KEYS).step_by(500) {
        h.apply((first..first + 500).map(small).collect())
            .await
            .unwrap();
    }
    let before = h.all();
    let rev_before = h.revision();
    assert_eq!(before.len(), KEYS as usize);

    info!("--- start a build and hold it at the start of its scan");
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let released = Arc::new(AtomicBool::new(false));
    let released_in_hook = released.clone();
    h.shared().on_next_scan(move || {
        let _ = started_tx.send(());
        // Bounded, so a build that (wrongly) held the lock would let the apply below finish
        // late, and the test fail, rather than hang.
        let _ = go_rx.recv_timeout(DEADLINE);
        released_in_hook.store(true, Ordering::SeqCst);
    });
    let mut builder = h.sm.clone();
    let build = tokio::spawn(async move { builder.build_snapshot().await });
    timeout(DEADLINE, started_rx)
        .await
        .expect("the scan starts")
        .unwrap();

    info!("--- while the scan runs: read, and apply an entry whose write is due at once");
    let mut applier = h.sm.clone();
    let applied = tokio::spawn(async move {
        let read_rev = applier.shared().read().mvcc.current_revision();
        apply(&mut applier, vec![big(KEYS + 1)])
            .await
            .map(|()| read_rev)
    });
    let read_rev = timeout(2 * DEADLINE, applied)
        .await
        .expect("the apply finishes")
        .unwrap()
        .unwrap();
    assert!(
        !released.load(Ordering::SeqCst),
        "the read and apply had to wait for the scan: the build held the lock while scanning"
    );
    assert_eq!(read_rev, rev_before);
    assert!(
        h.get(&key(KEYS + 1)).is_some(),
        "readers see the entry applied during the scan (from memory)"
    );
    go_tx.send(()).unwrap();
    let snap = timeout(DEADLINE, build)
        .await
        .expect("the build finishes")
        .unwrap()
        .unwrap();
    assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(KEYS));

    info!("--- the snapshot holds exactly the state at its applied log id");
    let mut fresh = Sm::new();
    fresh
        .sm
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    assert_eq!(fresh.last_applied().await, snap.meta.last_log_id);
    assert_eq!(fresh.revision(), rev_before);
    assert!(
        fresh.all() == before,
        "the installed snapshot differs from the state at its applied id (has {} keys, entry {} \
         applied during the scan {})",
        fresh.all().len(),
        KEYS + 1,
        if fresh.get(&key(KEYS + 1)).is_some() {
            "leaked in"
        } else {
            "is absent"
        }
    );
    let current = fresh.sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.last_log_id, snap.meta.last_log_id);

    info!("--- deferred writes resumed when the scan ended");
    h.apply(vec![big(KEYS + 2)]).await.unwrap();
    h.reopen();
    assert_eq!(h.last_applied().await.map(|l| l.index), Some(KEYS + 2));
    assert!(h.get(&key(KEYS + 1)).is_some());
    assert_eq!(h.all().len(), KEYS as usize + 2);
}
