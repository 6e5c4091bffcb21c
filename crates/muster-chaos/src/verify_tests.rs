//! The checks must catch what they claim to: synthetic histories with one planted fault each.

use std::time::Instant;

use super::*;
use crate::workload::watcher::Seen;

fn put(revision: i64, key: &str, value: &str) -> Seen {
    Seen {
        revision,
        key: key.into(),
        value: value.into(),
        delete: false,
        at: Instant::now(),
    }
}

/// A consistent run: two acked writes, counter 1..=2, all watched, three identical nodes.
fn good() -> (
    Vec<WriterResult>,
    CounterResult,
    WatchResult,
    Vec<(u64, NodeState)>,
) {
    let writers = vec![WriterResult {
        acked: vec![("chaos/w/0/1".into(), 2), ("chaos/w/0/2".into(), 4)],
        unknown: vec!["chaos/w/0/3".into()],
    }];
    let counter = CounterResult {
        acked: 1,
        unknown: 1,
        ..Default::default()
    };
    let watch = WatchResult {
        events: vec![
            put(2, "chaos/w/0/1", "x"),
            put(3, COUNTER, "1"),
            put(4, "chaos/w/0/2", "x"),
            put(5, COUNTER, "2"),
        ],
        streams: 1,
        compacted: false,
        caught_up: true,
        next_revision: 6,
    };
    let state = || NodeState {
        writes: [
            ("chaos/w/0/1".to_string(), 2),
            ("chaos/w/0/2".to_string(), 4),
        ]
        .into_iter()
        .collect(),
        counter: 2,
        regs: BTreeSet::new(),
    };
    (
        writers,
        counter,
        watch,
        vec![(1, state()), (2, state()), (3, state())],
    )
}

fn run(w: &[WriterResult], c: &CounterResult, x: &WatchResult, s: &[(u64, NodeState)]) -> Verdict {
    check(w, c, x, s, &mut Vec::new())
}

#[test]
fn a_consistent_run_has_no_anomalies() {
    let (w, c, x, s) = good();
    let v = run(&w, &c, &x, &s);
    assert_eq!(v.total_anomalies(), 0, "{v:?}");
    assert_eq!((v.puts_acked, v.puts_unknown, v.counter_final), (2, 1, 2));
}

#[test]
fn a_write_missing_on_one_node_is_lost_and_divergent() {
    let (w, c, x, mut s) = good();
    s[2].1.writes.remove("chaos/w/0/2");
    let v = run(&w, &c, &x, &s);
    assert_eq!((v.lost_writes, v.divergent_nodes), (1, 1));
}

#[test]
fn counter_outside_acked_and_unknown_is_an_anomaly() {
    let (w, mut c, x, s) = good();
    c.unknown = 0;
    c.acked = 1; // final 2 > acked 1 + unknown 0
    assert_eq!(run(&w, &c, &x, &s).counter_anomalies, 1);
}

#[test]
fn watch_gap_duplicate_and_reorder_are_found() {
    let (w, c, mut x, s) = good();
    x.events.remove(1); // counter value 1 never seen
    assert_eq!(run(&w, &c, &x, &s).watch_gaps, 1);

    let (w, c, mut x, s) = good();
    x.events.push(put(5, COUNTER, "2"));
    let v = run(&w, &c, &x, &s);
    assert!(v.watch_duplicates >= 1, "{v:?}");

    let (w, c, mut x, s) = good();
    x.events.swap(0, 1);
    assert!(run(&w, &c, &x, &s).watch_out_of_order >= 1);
}

#[test]
fn watched_but_not_stored_and_stored_but_not_watched() {
    let (w, c, mut x, s) = good();
    x.events.push(put(6, "chaos/w/9/9", "x"));
    assert_eq!(run(&w, &c, &x, &s).watch_phantoms, 1);

    let (w, c, mut x, s) = good();
    x.events.remove(2);
    assert_eq!(run(&w, &c, &x, &s).watch_missed_keys, 1);
}

#[test]
fn acked_revision_must_match_stored_revision() {
    let (mut w, c, x, s) = good();
    w[0].acked[0].1 = 7;
    assert_eq!(run(&w, &c, &x, &s).revision_mismatches, 1);
}

#[test]
fn a_watcher_that_fell_behind_is_incomplete() {
    let (w, c, mut x, s) = good();
    x.caught_up = false;
    assert_eq!(run(&w, &c, &x, &s).watch_incomplete, 1);
}
