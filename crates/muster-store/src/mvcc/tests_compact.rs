//! Compaction in steps: the apply records the compact revision (reads below it refused at once),
//! history is removed afterwards a few keys at a time; what readers see never depends on how far
//! removal has got, a reopen mid-removal resumes it, and a snapshot's records taken mid-removal
//! give the finished state.
#![allow(clippy::unwrap_used)]

use muster_types::{ApplyError, Command, Event, KeyRange, KeyValue, RangeRequest};

use super::codec::{HISTORY, META_COMPACT_DONE};
use super::drop_compacted;
use super::test_util::*;

const KEYS: usize = 20;

fn history_len(h: &H) -> usize {
    h.tree.scan_prefix([HISTORY]).count()
}

fn key(i: usize) -> String {
    format!("k{i:02}")
}

/// Every key put twice; every 4th deleted; every 3rd put a third time (re-creating some deleted
/// ones). Returns the store and the revision of `k08`'s delete, where compaction is tested: k00
/// and k04 were deleted below it (all their history there is garbage), k08's tombstone is at it
/// (its puts are garbage, and the tombstone's event loses its prev_kv), every other key keeps
/// its latest put below it.
fn churn() -> (H, i64) {
    let mut h = H::new();
    for round in 1..=2 {
        for i in 0..KEYS {
            h.put(&key(i), &format!("v{round}"));
        }
    }
    let mut at = 0;
    for i in (0..KEYS).step_by(4) {
        let r = h.delete(KeyRange::single(key(i)));
        if i == 8 {
            at = r.revision;
        }
    }
    for i in (0..KEYS).step_by(3) {
        h.put(&key(i), "v3");
    }
    (h, at)
}

/// Everything a reader can get from the store: reads at every revision from the compact one on
/// (full key-values), every watch event from it (prev_kv included), and the refusals below it.
#[derive(Debug, PartialEq)]
struct Seen {
    reads: Vec<Vec<KeyValue>>,
    events: Vec<Event>,
    read_below: Result<usize, ApplyError>,
    watch_below: Result<usize, ApplyError>,
    keys: usize,
}

fn observe(h: &H) -> Seen {
    let c = h.mvcc.compact_revision();
    let read = |revision| {
        h.range(RangeRequest {
            range: all(),
            revision,
            ..Default::default()
        })
    };
    Seen {
        reads: (c..=h.rev()).map(|r| read(r).unwrap().kvs).collect(),
        events: h.mvcc.events_since(c, &all(), 0).unwrap().unwrap(),
        read_below: read(c - 1).map(|r| r.kvs.len()),
        watch_below: h
            .mvcc
            .events_since(c - 1, &all(), 0)
            .unwrap()
            .map(|e| e.len()),
        keys: h.mvcc.key_count(),
    }
}

/// The store compacted at `at` with its removal finished: what every test must end up with.
fn finished(at: i64) -> H {
    let (mut h, _) = churn();
    h.apply(Command::Compact { revision: at });
    h.finish_compaction();
    assert!(!h.mvcc.compaction_pending());
    h
}

#[test]
fn compact_refuses_old_reads_at_once_and_removes_history_only_in_steps() {
    let (mut h, at) = churn();
    let reference = finished(at);
    let expected = observe(&reference);
    assert_eq!(
        expected.read_below,
        Err(ApplyError::Compacted {
            compact_revision: at
        })
    );
    assert_eq!(expected.watch_below, expected.read_below);
    let stored = history_len(&h);

    h.apply(Command::Compact { revision: at });
    assert_eq!(history_len(&h), stored, "the apply itself removes nothing");
    assert!(h.mvcc.compaction_pending());
    assert_eq!(observe(&h), expected, "before any removal");

    let mut steps = 0;
    loop {
        let before = history_len(&h);
        let step = h.compact_step(3, 2);
        steps += 1;
        assert!(steps <= KEYS, "3 keys per step: done within {KEYS} steps");
        // A step stops once 2 records are removed, after finishing the key it is on (≤ 3).
        assert!(step.removed <= 2 + 3, "step removed {}", step.removed);
        assert_eq!(history_len(&h), before - step.removed);
        assert_eq!(observe(&h), expected, "after step {steps}");
        if step.done {
            break;
        }
    }
    assert!(history_len(&h) < stored);
    assert_eq!(
        h.records(),
        reference.records(),
        "same tree as a finished removal"
    );
    assert!(h.tree.get(META_COMPACT_DONE).unwrap().is_some());
    assert_eq!(h.compact_step(3, 2).removed, 0, "nothing left to do");
}

#[test]
fn reopen_mid_removal_resumes_and_ends_in_the_same_state() {
    let (mut h, at) = churn();
    let reference = finished(at);
    h.apply(Command::Compact { revision: at });
    let step = h.compact_step(5, usize::MAX);
    assert!(step.removed > 0 && !step.done);

    // A crash with the next step's batch unwritten: its removes are lost.
    let mut lost = sled::Batch::default();
    h.mvcc.compact_step(&mut lost, 5, usize::MAX).unwrap();
    h.reopen();
    assert!(h.mvcc.compaction_pending(), "the pass is resumed on open");
    assert_eq!(observe(&h), observe(&reference));
    h.finish_compaction();
    assert_eq!(h.records(), reference.records());

    h.reopen();
    assert!(
        !h.mvcc.compaction_pending(),
        "a finished pass is not redone"
    );
    assert_eq!(observe(&h), observe(&reference));
    assert_eq!(h.mvcc.index, reference.mvcc.index);
}

#[test]
fn a_later_compact_restarts_removal_at_its_revision() {
    let (mut h, at) = churn();
    h.apply(Command::Compact { revision: at - 10 });
    assert!(!h.compact_step(4, usize::MAX).done);
    h.apply(Command::Compact { revision: at });
    assert_eq!(
        h.mvcc.events_since(at - 1, &all(), 0).unwrap(),
        Err(ApplyError::Compacted {
            compact_revision: at
        })
    );
    h.finish_compaction();
    let reference = finished(at);
    assert_eq!(h.records(), reference.records());
    assert_eq!(observe(&h), observe(&reference));
}

#[test]
fn snapshot_records_taken_mid_removal_give_the_finished_state() {
    let (mut h, at) = churn();
    let reference = finished(at);
    h.apply(Command::Compact { revision: at });
    h.compact_step(6, usize::MAX);
    let mid = h.records();

    info_step("the garbage is left out, and the removal marked done");
    let mut filtered = mid.clone();
    let dropped = drop_compacted(&mut filtered).unwrap();
    assert_eq!(dropped, history_len(&h) - history_len(&reference));
    assert_eq!(filtered, reference.records());

    info_step("installed either way, the state is the finished one");
    for (records, pending) in [(filtered, false), (mid, true)] {
        let mut fresh = H::new();
        for (k, v) in records {
            fresh.tree.insert(k, v).unwrap();
        }
        fresh.reopen();
        assert_eq!(fresh.mvcc.compaction_pending(), pending);
        assert_eq!(observe(&fresh), observe(&reference));
        fresh.finish_compaction();
        assert_eq!(fresh.records(), reference.records());
    }

    info_step("a store never compacted: nothing to drop");
    let (never, _) = churn();
    let mut records = never.records();
    assert_eq!(drop_compacted(&mut records).unwrap(), 0);
    assert_eq!(records, never.records());
}

fn info_step(what: &str) {
    tracing::info!("--- {what}");
}
