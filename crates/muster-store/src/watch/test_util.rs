//! Test harness for the hub: an in-memory history with etcd's `events_since` contract behind a
//! `RwLock` (standing in for the state machine lock), an "apply" that commits synthetic events
//! and publishes them under the write lock, and a consumer that drains a watcher the way the
//! Watch service does.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, RwLock};

use muster_types::{ApplyError, Event, EventKind, KeyRange, KeyValue};
use tokio::sync::Notify;

use super::{Delivery, Filters, HistorySource, Registered, WatchHub, WatchSpec, WatcherId};
use crate::error::StoreError;

/// Synthetic history: every event ever committed, minus compacted ones.
pub(super) struct Fake {
    pub log: Vec<Event>,
    pub current: i64,
    pub compact: i64,
}

impl Fake {
    pub fn new() -> Fake {
        Fake {
            log: Vec::new(),
            current: 1,
            compact: 0,
        }
    }

    /// Commits one revision with one event per `(key, kind)`; returns the events.
    pub fn commit(&mut self, ops: &[(&str, EventKind)]) -> Vec<Event> {
        self.current += 1;
        let rev = self.current;
        let events: Vec<Event> = ops
            .iter()
            .map(|(key, kind)| Event {
                kind: *kind,
                kv: KeyValue {
                    key: key.as_bytes().to_vec(),
                    mod_revision: rev,
                    value: format!("v{rev}").into_bytes(),
                    ..KeyValue::default()
                },
                prev_kv: None,
            })
            .collect();
        self.log.extend(events.iter().cloned());
        events
    }

    /// Forgets history below `rev` (coarser than etcd's, enough for the hub's contract).
    pub fn compact(&mut self, rev: i64) {
        self.compact = rev;
        self.log.retain(|e| e.kv.mod_revision >= rev);
    }
}

impl HistorySource for Fake {
    fn current_revision(&self) -> i64 {
        self.current
    }

    fn compact_revision(&self) -> i64 {
        self.compact
    }

    fn events_since(
        &self,
        from: i64,
        range: &KeyRange,
        limit: usize,
    ) -> Result<Result<Vec<Event>, ApplyError>, StoreError> {
        if from > 0 && from < self.compact {
            return Ok(Err(ApplyError::Compacted {
                compact_revision: self.compact,
            }));
        }
        let mut out: Vec<Event> = Vec::new();
        for e in self.log.iter().filter(|e| e.kv.mod_revision >= from) {
            if !range.contains(&e.kv.key) {
                continue;
            }
            let full = limit > 0 && out.len() >= limit;
            if full && out.last().map(|l| l.kv.mod_revision) != Some(e.kv.mod_revision) {
                break;
            }
            out.push(e.clone());
        }
        Ok(Ok(out))
    }
}

/// What draining a watcher produced.
#[derive(Debug, Default)]
pub(super) struct Drained {
    /// Each delivered batch's events (whole revisions per batch).
    pub batches: Vec<Vec<Event>>,
    pub compacted: Option<i64>,
}

impl Drained {
    pub fn events(&self) -> Vec<Event> {
        self.batches.iter().flatten().cloned().collect()
    }

    /// (key, revision) of every event, in delivery order.
    pub fn keys_revs(&self) -> Vec<(String, i64)> {
        self.events()
            .iter()
            .map(|e| {
                (
                    String::from_utf8_lossy(&e.kv.key).into_owned(),
                    e.kv.mod_revision,
                )
            })
            .collect()
    }
}

/// The fake state machine: history under a lock, and the hub.
pub(super) struct Sm {
    pub lock: RwLock<Fake>,
    pub hub: WatchHub,
    pub notify: Arc<Notify>,
    /// Events per catch-up read.
    pub chunk: usize,
}

impl Sm {
    pub fn new() -> Sm {
        Sm {
            lock: RwLock::new(Fake::new()),
            hub: WatchHub::new(1, 0),
            notify: Arc::new(Notify::new()),
            chunk: 1000,
        }
    }

    /// Commits one revision and publishes it under the write lock, as apply does.
    pub fn apply(&self, ops: &[(&str, EventKind)]) -> i64 {
        let mut g = self.lock.write().unwrap();
        let events = g.commit(ops);
        self.hub.publish(&*g, events);
        g.current
    }

    pub fn put(&self, key: &str) -> i64 {
        self.apply(&[(key, EventKind::Put)])
    }

    pub fn compact(&self, rev: i64) {
        let mut g = self.lock.write().unwrap();
        g.compact(rev);
        self.hub.publish(&*g, Vec::new());
    }

    pub fn register(&self, spec: &WatchSpec) -> Registered {
        let g = self.lock.read().unwrap();
        self.hub.register(&*g, spec, self.notify.clone())
    }

    /// Registers and expects a watcher.
    pub fn watch(&self, spec: &WatchSpec) -> WatcherId {
        match self.register(spec) {
            Registered::Watching { id, .. } => id,
            other => panic!("expected a watcher, got {other:?}"),
        }
    }

    /// Delivers everything available for `id` now, `max` events per take.
    pub fn drain(&self, id: WatcherId, max: usize) -> Drained {
        let mut out = Drained::default();
        loop {
            let d = match self.hub.take(id, max) {
                Delivery::NeedsCatchUp => {
                    let g = self.lock.read().unwrap();
                    self.hub.catch_up(&*g, id, self.chunk).unwrap()
                }
                other => other,
            };
            match d {
                Delivery::Events(b) => {
                    if !b.events.is_empty() {
                        out.batches
                            .push(b.events.iter().map(|e| (**e).clone()).collect());
                    }
                }
                Delivery::Compacted { compact_revision } => {
                    out.compacted = Some(compact_revision);
                    return out;
                }
                Delivery::Idle | Delivery::Gone => return out,
                Delivery::NeedsCatchUp => unreachable!("take's answer was handled"),
            }
        }
    }
}

/// A spec with roomy queues.
pub(super) fn spec(range: KeyRange, start_revision: i64) -> WatchSpec {
    WatchSpec {
        range,
        start_revision,
        filters: Filters::default(),
        prev_kv: false,
        queue_events: 1000,
        queue_bytes: 1 << 20,
    }
}

pub(super) fn put(key: &str) -> (&str, EventKind) {
    (key, EventKind::Put)
}

pub(super) fn del(key: &str) -> (&str, EventKind) {
    (key, EventKind::Delete)
}
