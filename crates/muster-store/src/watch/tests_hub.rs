//! Hub behaviour with synthetic events: matching and filters, start revisions, the
//! registration race, lagging watchers, atomic revisions, compaction, progress, snapshot reset.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use muster_types::KeyRange;

use super::test_util::*;
use super::{Delivery, Filters, Registered, WatchSpec};

fn kr(pairs: &[(&str, i64)]) -> Vec<(String, i64)> {
    pairs.iter().map(|(k, r)| (k.to_string(), *r)).collect()
}

#[test]
fn live_watchers_get_matching_events_in_order() {
    let sm = Sm::new();
    let single = sm.watch(&spec(KeyRange::single("a"), 0));
    let prefix = sm.watch(&spec(KeyRange::prefix("p/"), 0));
    let from_key = sm.watch(&spec(KeyRange::new("m", vec![0]), 0));
    let all = sm.watch(&spec(KeyRange::new(vec![0], vec![0]), 0));
    let no_put = sm.watch(&WatchSpec {
        filters: Filters {
            no_put: true,
            no_delete: false,
        },
        ..spec(KeyRange::prefix("p/"), 0)
    });
    let no_delete = sm.watch(&WatchSpec {
        filters: Filters {
            no_put: false,
            no_delete: true,
        },
        ..spec(KeyRange::prefix("p/"), 0)
    });
    sm.put("a"); // 2
    sm.apply(&[put("p/1"), put("p/2"), put("z")]); // 3
    sm.apply(&[del("p/1")]); // 4
    sm.put("ab"); // 5
    sm.apply(&[del("a"), put("b")]); // 6

    assert_eq!(sm.drain(single, 100).keys_revs(), kr(&[("a", 2), ("a", 6)]));
    assert_eq!(
        sm.drain(prefix, 100).keys_revs(),
        kr(&[("p/1", 3), ("p/2", 3), ("p/1", 4)])
    );
    assert_eq!(
        sm.drain(from_key, 100).keys_revs(),
        kr(&[("p/1", 3), ("p/2", 3), ("z", 3), ("p/1", 4)])
    );
    assert_eq!(sm.drain(all, 100).events().len(), 8);
    assert_eq!(sm.drain(no_put, 100).keys_revs(), kr(&[("p/1", 4)]));
    assert_eq!(
        sm.drain(no_delete, 100).keys_revs(),
        kr(&[("p/1", 3), ("p/2", 3)])
    );
    // Unregistered watchers get nothing more.
    assert!(sm.hub.unregister(single));
    sm.put("a");
    assert_eq!(sm.hub.take(single, 10), Delivery::Gone);
    assert!(!sm.hub.unregister(single));
}

#[test]
fn future_start_revision_waits_for_it() {
    let sm = Sm::new();
    sm.put("k"); // 2
    let w = sm.watch(&spec(KeyRange::single("k"), 5));
    for _ in 0..5 {
        sm.put("k"); // 3..=7
    }
    assert_eq!(
        sm.drain(w, 100).keys_revs(),
        kr(&[("k", 5), ("k", 6), ("k", 7)])
    );
}

#[test]
fn past_start_catches_up_from_history_then_goes_live() {
    let mut sm = Sm::new();
    sm.chunk = 2;
    for i in 0..10 {
        sm.put(&format!("k{}", i % 3)); // 2..=11
    }
    let w = sm.watch(&spec(KeyRange::prefix("k"), 3));
    assert!(!sm.hub.watcher_stats(w).unwrap().live);
    assert_eq!(sm.hub.take(w, 10), Delivery::NeedsCatchUp);
    let d = sm.drain(w, 10);
    let revs: Vec<i64> = d.events().iter().map(|e| e.kv.mod_revision).collect();
    assert_eq!(revs, (3..=11).collect::<Vec<_>>());
    assert!(d.batches.len() >= 4, "read in chunks of about 2");
    assert!(sm.hub.watcher_stats(w).unwrap().live);
    sm.put("k1"); // 12
    assert_eq!(sm.drain(w, 10).keys_revs(), kr(&[("k1", 12)]));
    assert_eq!(sm.hub.stats().catch_up_events, 9);
}

#[test]
fn lagging_watcher_moves_to_catch_up_within_its_bound_and_loses_nothing() {
    let sm = Sm::new();
    let slow = sm.watch(&WatchSpec {
        queue_events: 4,
        ..spec(KeyRange::prefix("k"), 0)
    });
    let fast = sm.watch(&spec(KeyRange::prefix("k"), 0));
    let mut fast_seen = Vec::new();
    for i in 0..100 {
        if i % 10 == 0 {
            sm.apply(&[put("k/a"), put("k/b"), put("k/c")]);
        } else {
            sm.put(&format!("k/{i}"));
        }
        let s = sm.hub.watcher_stats(slow).unwrap();
        assert!(s.queued_events <= 4, "queue bound held: {s:?}");
        // The fast watcher is never held back by the slow one.
        fast_seen.extend(sm.drain(fast, 1000).events());
        assert_eq!(sm.hub.watcher_stats(fast).unwrap().queued_events, 0);
    }
    let s = sm.hub.watcher_stats(slow).unwrap();
    assert!(!s.live && s.lagged >= 1, "{s:?}");
    assert!(s.peak_queued_events <= 4);
    assert_eq!(sm.hub.stats().lagged, s.lagged);

    let got = sm.drain(slow, 3).events();
    assert_eq!(
        got, fast_seen,
        "the slow watcher gets every event, in order"
    );
    assert_eq!(got.len(), 120);
    assert!(sm.hub.watcher_stats(slow).unwrap().live, "rejoined live");
    sm.put("k/after");
    assert_eq!(sm.drain(slow, 3).keys_revs(), kr(&[("k/after", 102)]));
}

#[test]
fn byte_bound_also_moves_to_catch_up() {
    let sm = Sm::new();
    let w = sm.watch(&WatchSpec {
        queue_bytes: 400, // about two small events
        ..spec(KeyRange::prefix("k"), 0)
    });
    for i in 0..10 {
        sm.put(&format!("k{i}"));
        assert!(sm.hub.watcher_stats(w).unwrap().queued_bytes <= 400);
    }
    assert!(sm.hub.watcher_stats(w).unwrap().lagged >= 1);
    assert_eq!(sm.drain(w, 100).events().len(), 10);
}

#[test]
fn a_revision_is_never_split() {
    let mut sm = Sm::new();
    sm.chunk = 1;
    let w = sm.watch(&WatchSpec {
        queue_events: 3,
        ..spec(KeyRange::prefix("k"), 0)
    });
    sm.apply(&[put("k1"), put("k2")]); // 2: fits
    sm.apply(&[put("k1"), put("k2"), put("k3"), put("k4"), put("k5")]); // 3: cannot fit
    sm.apply(&[put("k1"), put("k2")]); // 4
    let s = sm.hub.watcher_stats(w).unwrap();
    assert_eq!(s.queued_events, 2, "revision 3 was not partly queued");
    assert!(!s.live);
    let d = sm.drain(w, 1);
    let mut seen_in = std::collections::BTreeMap::new();
    for (i, b) in d.batches.iter().enumerate() {
        for e in b {
            let batch = *seen_in.entry(e.kv.mod_revision).or_insert(i);
            assert_eq!(
                batch, i,
                "revision {} split over batches",
                e.kv.mod_revision
            );
        }
    }
    let sizes: Vec<usize> = d.batches.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![2, 5, 2]);
}

#[test]
fn start_below_compaction_is_refused() {
    let sm = Sm::new();
    for i in 0..6 {
        sm.put(&format!("k{i}")); // 2..=7
    }
    sm.compact(5);
    assert_eq!(
        sm.register(&spec(KeyRange::prefix("k"), 3)),
        Registered::Compacted {
            compact_revision: 5,
            revision: 7
        }
    );
    assert_eq!(sm.hub.stats().watchers, 0);
    // At the compact revision itself the history is complete.
    let w = sm.watch(&spec(KeyRange::prefix("k"), 5));
    let revs: Vec<i64> = sm
        .drain(w, 10)
        .events()
        .iter()
        .map(|e| e.kv.mod_revision)
        .collect();
    assert_eq!(revs, vec![5, 6, 7]);
}

#[test]
fn compaction_while_lagging_cancels_the_watcher() {
    let sm = Sm::new();
    let w = sm.watch(&WatchSpec {
        queue_events: 2,
        ..spec(KeyRange::prefix("k"), 0)
    });
    for i in 0..10 {
        sm.put(&format!("k{i}")); // 2..=11; lags at 4
    }
    sm.compact(8);
    let d = sm.drain(w, 100);
    // The queued revisions still go out; then the gap is reported, not skipped.
    assert_eq!(d.keys_revs(), kr(&[("k0", 2), ("k1", 3)]));
    assert_eq!(d.compacted, Some(8));
    assert!(sm.hub.watcher_stats(w).is_none());
    assert_eq!(sm.hub.stats().compacted, 1);
}

#[test]
fn progress_certifies_what_left_the_hub() {
    let sm = Sm::new();
    let live = sm.watch(&spec(KeyRange::single("a"), 0));
    sm.put("b"); // 2: not for it
    assert_eq!(sm.hub.progress(&[live]), 2);
    assert_eq!(sm.hub.synced_revision(live), Some(2));
    sm.put("a"); // 3: queued, not taken
    assert_eq!(sm.hub.progress(&[live]), 2);
    assert_eq!(sm.hub.synced_revision(live), None);
    let past = sm.watch(&spec(KeyRange::single("a"), 2));
    assert_eq!(sm.hub.progress(&[live, past]), 1);
    sm.drain(live, 10);
    assert_eq!(sm.hub.progress(&[live]), 3);
    sm.drain(past, 10);
    assert_eq!(sm.hub.progress(&[live, past]), 3);
    assert_eq!(sm.hub.progress(&[]), 3);
}

#[test]
fn snapshot_reset_moves_live_watchers_to_catch_up() {
    let sm = Sm::new();
    let w = sm.watch(&spec(KeyRange::prefix("k"), 0));
    let future = sm.watch(&spec(KeyRange::prefix("k"), 6));
    sm.put("k1"); // 2: published
    {
        // An install: the store jumps to 7 without publishing 3..=7.
        let mut g = sm.lock.write().unwrap();
        for i in 3..=7 {
            g.commit(&[put(&format!("k{i}"))]);
        }
        sm.hub.reset(&*g);
    }
    let revs = |d: Drained| -> Vec<i64> { d.events().iter().map(|e| e.kv.mod_revision).collect() };
    assert_eq!(revs(sm.drain(w, 100)), vec![2, 3, 4, 5, 6, 7]);
    assert_eq!(revs(sm.drain(future, 100)), vec![6, 7]);
    sm.put("k8");
    assert_eq!(revs(sm.drain(w, 100)), vec![8]);
    assert_eq!(revs(sm.drain(future, 100)), vec![8]);
}

/// Writers publish while other threads register watchers (live and in the past, with tiny
/// queues so they lag and catch up concurrently) and consume: each watcher must see exactly
/// the history from its start, no gap, no duplicate.
#[test]
fn registration_race_loses_no_event() {
    const REVS: usize = 3000;
    let sm = Arc::new(Sm {
        chunk: 7,
        ..Sm::new()
    });
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (sm, done) = (sm.clone(), done.clone());
        std::thread::spawn(move || {
            for i in 0..REVS {
                let k = format!("k/{}", i % 13);
                if i % 17 == 0 {
                    sm.apply(&[put(&k), put("k/x"), del("k/y")]);
                } else {
                    sm.put(&k);
                }
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let consumers: Vec<_> = (0..4)
        .map(|t| {
            let (sm, done) = (sm.clone(), done.clone());
            std::thread::spawn(move || {
                let mut checked = 0;
                let mut round = 0i64;
                while !done.load(Ordering::SeqCst) || checked < 3 {
                    round += 1;
                    let current = sm.hub.current_revision();
                    let (start, range) = match (t + round) % 3 {
                        0 => (0, KeyRange::prefix("k/")),
                        1 => ((current - 5 * round).max(1), KeyRange::prefix("k/")),
                        _ => ((current - 2).max(1), KeyRange::single("k/3")),
                    };
                    let mut s = spec(range.clone(), start);
                    s.queue_events = 5;
                    let (id, created) = match sm.register(&s) {
                        Registered::Watching { id, revision } => (id, revision),
                        other => panic!("{other:?}"),
                    };
                    let mut got = Vec::new();
                    for _ in 0..20 {
                        got.extend(sm.drain(id, 4).events());
                    }
                    // Stop writes from racing the final drain: take a read view.
                    let end = {
                        let g = sm.lock.read().unwrap();
                        g.current
                    };
                    while got.last().is_none_or(|e| e.kv.mod_revision < end)
                        && sm.hub.progress(&[id]) < end
                    {
                        got.extend(sm.drain(id, 4).events());
                    }
                    let first = if start == 0 { created + 1 } else { start };
                    let expected: Vec<_> = {
                        let g = sm.lock.read().unwrap();
                        g.log
                            .iter()
                            .filter(|e| e.kv.mod_revision >= first && range.contains(&e.kv.key))
                            .filter(|e| e.kv.mod_revision <= end)
                            .cloned()
                            .collect()
                    };
                    let got: Vec<_> = got
                        .into_iter()
                        .filter(|e| e.kv.mod_revision <= end)
                        .collect();
                    assert_eq!(
                        got.len(),
                        expected.len(),
                        "thread {t} watcher {id} from {first}"
                    );
                    assert_eq!(got, expected, "thread {t} watcher {id} from {first}");
                    sm.hub.unregister(id);
                    checked += 1;
                }
                checked
            })
        })
        .collect();
    writer.join().unwrap();
    let total: usize = consumers.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(total >= 12);
    assert_eq!(sm.hub.stats().watchers, 0);
    assert_eq!(sm.hub.current_revision(), REVS as i64 + 1);
}
