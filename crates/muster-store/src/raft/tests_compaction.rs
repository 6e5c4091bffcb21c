//! Compaction through the state machine: the Compact entry applies at once (reads below refused,
//! nothing removed), the cleanup task removes the history afterwards in bounded steps, waits
//! (with a bounded batch) while a snapshot scan needs the tree, resumes after a reopen, and a
//! snapshot built mid-removal installs to the same state.
#![allow(clippy::unwrap_used)]

use muster_types::{ApplyError, Command, KeyRange, LogEntry, RangeRequest};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder};
use tokio::time::timeout;
use tracing::info;

use super::state_machine::{SnapshotPayload, Step, STEP_KEYS, STEP_RECORDS, WRITE_AT_REMOVES};
use super::test_util::{log_id, put_entry, wait_until, Sm, DEADLINE};
use super::Entry;

/// Puts every key of `keys` (each entry one key) in groups of 500, as entries `first..`;
/// returns the next free index.
async fn put_all(h: &mut Sm, first: u64, keys: u64, value: &str) -> u64 {
    let mut index = first;
    let mut k = 0;
    while k < keys {
        let n = (keys - k).min(500);
        let entries = (0..n)
            .map(|j| {
                let mut e = put_entry(index + j, value.as_bytes().to_vec());
                if let EntryPayload::Normal(le) = &mut e.payload {
                    if let Command::Put(p) = &mut le.cmd {
                        p.key = format!("c{:06}", k + j).into_bytes();
                    }
                }
                e
            })
            .collect();
        h.apply(entries).await.unwrap();
        index += n;
        k += n;
    }
    index
}

fn compact_entry(index: u64, revision: i64) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(LogEntry {
            time_ms: 1_000,
            cmd: Command::Compact { revision },
        }),
    }
}

/// History records in the tree (what is on disk, not what readers see).
fn stored_history(h: &Sm) -> usize {
    h.db.open_tree("sm").unwrap().scan_prefix([b'h']).count()
}

fn pending(h: &Sm) -> bool {
    h.shared().read().mvcc.compaction_pending()
}

/// A read of everything at `revision`.
fn read_at(h: &Sm, revision: i64) -> Result<usize, ApplyError> {
    let req = RangeRequest {
        range: KeyRange::new(vec![0], vec![0]),
        revision,
        ..Default::default()
    };
    let shared = h.shared();
    let inner = shared.read();
    inner.mvcc.range(&req).unwrap().map(|r| r.kvs.len())
}

/// Two rounds of puts over `keys` keys, then a Compact at the current revision: `keys`
/// history records become garbage. Returns the compact revision and the next free index.
async fn churn_and_compact(h: &mut Sm, keys: u64) -> (i64, u64) {
    let next = put_all(h, 1, keys, "one").await;
    let next = put_all(h, next, keys, "two").await;
    let at = h.revision();
    h.apply(vec![compact_entry(next, at)]).await.unwrap();
    (at, next + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_applies_at_once_and_the_history_goes_in_the_background() {
    const KEYS: u64 = 3_000;
    let mut h = Sm::new();
    h.shared().pause_cleanup(true);
    let (at, _) = churn_and_compact(&mut h, KEYS).await;

    info!("--- the apply refused old reads at once and removed nothing");
    assert_eq!(
        read_at(&h, at - 1),
        Err(ApplyError::Compacted {
            compact_revision: at
        })
    );
    assert_eq!(read_at(&h, at), Ok(KEYS as usize));
    assert!(pending(&h));
    assert_eq!(h.shared().stats().compacted_records_removed, 0);

    info!("--- the cleanup task removes the garbage and the ticker writes it");
    h.shared().pause_cleanup(false);
    wait_until("the removal pass ends", || !pending(&h)).await;
    wait_until("the removes reach the tree", || {
        stored_history(&h) == KEYS as usize
    })
    .await;
    assert_eq!(h.shared().stats().compacted_records_removed, KEYS);
    assert_eq!(read_at(&h, at), Ok(KEYS as usize));
    assert!(h.all().iter().all(|kv| kv.value == b"two"));

    info!("--- reopened: nothing left to do, same state");
    h.reopen();
    assert!(!pending(&h));
    assert_eq!(h.all().len(), KEYS as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopen_mid_removal_resumes_it() {
    const KEYS: u64 = 2_000;
    let mut h = Sm::new();
    h.shared().pause_cleanup(true);
    let (at, _) = churn_and_compact(&mut h, KEYS).await;
    wait_until("both rounds are in the tree", || {
        stored_history(&h) == 2 * KEYS as usize
    })
    .await;
    let step = h.shared().cleanup_step_now(STEP_KEYS, 300).unwrap();
    assert_eq!(step, Step::Progress);
    let removed = h.shared().stats().compacted_records_removed as usize;
    assert!((300..KEYS as usize).contains(&removed));
    wait_until("the ticker writes the first step's removes", || {
        stored_history(&h) == 2 * KEYS as usize - removed
    })
    .await;

    info!("--- reopen (the new store's cleanup task is not paused)");
    h.reopen();
    assert_eq!(
        read_at(&h, at - 1),
        Err(ApplyError::Compacted {
            compact_revision: at
        })
    );
    wait_until("the resumed pass ends and is written", || {
        !pending(&h) && stored_history(&h) == KEYS as usize
    })
    .await;
    assert_eq!(
        h.shared().stats().compacted_records_removed as usize,
        KEYS as usize - removed,
        "the reopened store removed the rest, from its rebuilt index"
    );
    assert!(h.all().iter().all(|kv| kv.value == b"two"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_mid_removal_installs_to_the_same_state() {
    const KEYS: u64 = 2_000;
    let mut h = Sm::new();
    h.shared().pause_cleanup(true);
    let (at, _) = churn_and_compact(&mut h, KEYS).await;
    assert_eq!(
        h.shared().cleanup_step_now(STEP_KEYS, 500).unwrap(),
        Step::Progress
    );

    let snap = h.sm.clone().build_snapshot().await.unwrap();
    let payload: SnapshotPayload = bincode::deserialize(&snap.snapshot).unwrap();
    let history = payload
        .records
        .iter()
        .filter(|(k, _)| k.first() == Some(&b'h'))
        .count();
    assert_eq!(
        history, KEYS as usize,
        "the snapshot leaves the garbage out"
    );

    let mut fresh = Sm::new();
    fresh
        .sm
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    assert!(!pending(&fresh), "nothing to remove on the installed store");
    assert_eq!(fresh.all(), h.all());
    assert_eq!(fresh.revision(), h.revision());
    for (node, what) in [(&h, "source"), (&fresh, "installed")] {
        assert_eq!(
            read_at(node, at - 1),
            Err(ApplyError::Compacted {
                compact_revision: at
            }),
            "{what}"
        );
    }
    let events = |s: &Sm| {
        s.shared()
            .read()
            .mvcc
            .events_since(at, &KeyRange::new(vec![0], vec![0]), 0)
            .unwrap()
            .unwrap()
    };
    assert_eq!(events(&fresh), events(&h));

    info!("--- the source finishes its own pass and ends with the same history");
    h.shared().pause_cleanup(false);
    wait_until("the source's removal is written", || {
        !pending(&h) && stored_history(&h) == KEYS as usize
    })
    .await;
    assert_eq!(stored_history(&fresh), KEYS as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_waits_with_a_bounded_batch_while_a_snapshot_scan_runs() {
    const KEYS: u64 = (WRITE_AT_REMOVES + STEP_RECORDS) as u64;
    let mut h = Sm::new();
    h.shared().pause_cleanup(true);
    churn_and_compact(&mut h, KEYS).await;

    info!("--- hold a build at the start of its scan");
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    h.shared().on_next_scan(move || {
        let _ = started_tx.send(());
        let _ = go_rx.recv_timeout(DEADLINE);
    });
    let mut builder = h.sm.clone();
    let build = tokio::spawn(async move { builder.build_snapshot().await });
    timeout(DEADLINE, started_rx)
        .await
        .expect("the scan starts")
        .unwrap();

    info!("--- steps fill the batch up to its bound, then wait");
    let stored = stored_history(&h);
    let mut steps = 0;
    let blocked = loop {
        let step = h
            .shared()
            .cleanup_step_now(STEP_KEYS, STEP_RECORDS)
            .unwrap();
        steps += 1;
        if step == Step::Blocked {
            break true;
        }
        if steps > KEYS as usize / STEP_RECORDS + 2 {
            break false;
        }
    };
    assert!(blocked, "no step waited after {steps} steps");
    let removed = h.shared().stats().compacted_records_removed;
    assert!(
        (WRITE_AT_REMOVES as u64..WRITE_AT_REMOVES as u64 + STEP_RECORDS as u64).contains(&removed),
        "the batch holds {removed} removes"
    );
    assert_eq!(
        stored_history(&h),
        stored,
        "nothing written during the scan"
    );

    info!("--- the scan ends: the build holds the state at its applied id, removal goes on");
    go_tx.send(()).unwrap();
    let snap = timeout(DEADLINE, build)
        .await
        .expect("the build finishes")
        .unwrap()
        .unwrap();
    let payload: SnapshotPayload = bincode::deserialize(&snap.snapshot).unwrap();
    let history = payload.records.iter().filter(|(k, _)| k[0] == b'h').count();
    assert_eq!(history, KEYS as usize);
    h.shared().pause_cleanup(false);
    wait_until("the removal is written", || {
        !pending(&h) && stored_history(&h) == KEYS as usize
    })
    .await;
    assert_eq!(h.shared().stats().compacted_records_removed, KEYS);
}
