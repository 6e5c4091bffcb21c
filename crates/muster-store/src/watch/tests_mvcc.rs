//! The hub over the real MVCC keyspace: live events and catch-up from sled history agree
//! (prev_kv included), and compaction of real history cancels a lagging watcher.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, RwLock};

use muster_types::{Command, DeleteRangeRequest, Event, EventKind, KeyRange, PutRequest};
use tokio::sync::Notify;

use super::{Delivery, Registered, WatchHub, WatchSpec, WatcherId};
use crate::mvcc::Mvcc;

struct Store {
    _db: sled::Db,
    tree: sled::Tree,
    mvcc: RwLock<Mvcc>,
    hub: WatchHub,
    notify: Arc<Notify>,
}

impl Store {
    fn new() -> Store {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("sm").unwrap();
        let mvcc = Mvcc::open(tree.clone()).unwrap();
        let hub = WatchHub::new(mvcc.current_revision(), mvcc.compact_revision());
        Store {
            _db: db,
            tree,
            mvcc: RwLock::new(mvcc),
            hub,
            notify: Arc::new(Notify::new()),
        }
    }

    /// Applies a group of commands the way the state machine does: one batch, then publish
    /// under the write lock.
    fn apply(&self, cmds: &[Command]) {
        let mut g = self.mvcc.write().unwrap();
        let mut batch = sled::Batch::default();
        let mut events = Vec::new();
        for cmd in cmds {
            g.apply(1, cmd, &mut batch, &mut events).unwrap();
        }
        self.tree.apply_batch(batch).unwrap();
        self.hub.publish(&*g, events);
    }

    fn watch(&self, spec: &WatchSpec) -> WatcherId {
        let g = self.mvcc.read().unwrap();
        match self.hub.register(&*g, spec, self.notify.clone()) {
            Registered::Watching { id, .. } => id,
            other => panic!("{other:?}"),
        }
    }

    fn drain(&self, id: WatcherId) -> (Vec<Event>, Option<i64>) {
        let mut out = Vec::new();
        loop {
            let d = match self.hub.take(id, 100) {
                Delivery::NeedsCatchUp => {
                    let g = self.mvcc.read().unwrap();
                    self.hub.catch_up(&*g, id, 3).unwrap()
                }
                d => d,
            };
            match d {
                Delivery::Events(b) => out.extend(b.events.iter().map(|e| (**e).clone())),
                Delivery::Compacted { compact_revision } => return (out, Some(compact_revision)),
                _ => return (out, None),
            }
        }
    }
}

fn put(k: &str, v: &str) -> Command {
    Command::Put(PutRequest {
        key: k.as_bytes().to_vec(),
        value: v.as_bytes().to_vec(),
        ..Default::default()
    })
}

fn spec(range: KeyRange, start: i64, queue_events: usize) -> WatchSpec {
    WatchSpec {
        range,
        start_revision: start,
        filters: Default::default(),
        prev_kv: true,
        queue_events,
        queue_bytes: 1 << 20,
    }
}

#[test]
fn live_and_history_deliveries_are_identical() {
    let s = Store::new();
    let live = s.watch(&spec(KeyRange::prefix("k/"), 0, 1000));
    s.apply(&[put("k/a", "1"), put("k/b", "1")]); // 2, 3 (one group)
    s.apply(&[put("k/a", "2")]); // 4
    s.apply(&[Command::DeleteRange(DeleteRangeRequest {
        range: KeyRange::prefix("k/"),
        prev_kv: false,
    })]); // 5
    s.apply(&[put("other", "x"), put("k/a", "3")]); // 6, 7
    let (live_events, _) = s.drain(live);
    let past = s.watch(&spec(KeyRange::prefix("k/"), 2, 1000));
    let (history_events, _) = s.drain(past);
    assert_eq!(live_events.len(), 6);
    assert_eq!(live_events, history_events);
    let deletes: Vec<&Event> = live_events
        .iter()
        .filter(|e| e.kind == EventKind::Delete)
        .collect();
    assert_eq!(deletes.len(), 2);
    assert!(deletes
        .iter()
        .all(|e| e.kv.mod_revision == 5 && e.prev_kv.is_some()));
    assert_eq!(
        live_events[2].prev_kv.as_ref().map(|p| p.value.clone()),
        Some(b"1".to_vec())
    );
}

#[test]
fn compaction_of_real_history_cancels_a_lagging_watcher() {
    let s = Store::new();
    let slow = s.watch(&spec(KeyRange::prefix("k/"), 0, 2));
    for i in 0..10 {
        s.apply(&[put(&format!("k/{i}"), "v")]); // 2..=11
    }
    assert!(!s.hub.watcher_stats(slow).unwrap().live);
    s.apply(&[Command::Compact { revision: 9 }]);
    assert_eq!(s.hub.stats().compact_revision, 9);
    let (events, compacted) = s.drain(slow);
    assert_eq!(events.len(), 2, "queued revisions 2 and 3 still go out");
    assert_eq!(compacted, Some(9));
    assert!(s.hub.watcher_stats(slow).is_none());
}
