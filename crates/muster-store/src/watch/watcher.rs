//! One watcher inside the hub: what it watches, where it is in the revision sequence, and its
//! bounded live queue. The queue only ever holds whole revisions (the hub offers a revision's
//! matching events all at once or not at all), so popping never has to split one.

use std::collections::VecDeque;
use std::sync::Arc;

use muster_types::{Event, KeyRange};
use tokio::sync::Notify;

use super::{Filters, WatchSpec, WatcherId, WatcherStats};

/// How the watcher is being fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// `publish` pushes matching events into the queue.
    Live,
    /// `publish` skips it; history is read from `next_rev` once the queue is drained.
    CatchUp,
}

pub(super) struct Watcher {
    pub id: WatcherId,
    pub range: KeyRange,
    pub filters: Filters,
    pub mode: Mode,
    /// Live: events below it are not wanted (it is the start revision of a watcher that
    /// starts in the future; stale otherwise, which is harmless since publish only moves
    /// forward). Catch-up: the first revision not yet queued or sent.
    pub next_rev: i64,
    queue: VecDeque<Arc<Event>>,
    queued_bytes: usize,
    capacity_events: usize,
    capacity_bytes: usize,
    peak_events: usize,
    peak_bytes: usize,
    pub lagged: u64,
    /// Wakes the consumer (one per gRPC stream, shared by its watchers).
    pub notify: Arc<Notify>,
}

/// The memory an event's data takes, for the byte bound: keys and values, prev_kv included,
/// plus a fixed overhead for the structs and the queue slot.
pub(super) fn event_bytes(e: &Event) -> usize {
    const OVERHEAD: usize = 128;
    let prev = e
        .prev_kv
        .as_ref()
        .map_or(0, |p| p.key.len() + p.value.len());
    OVERHEAD + e.kv.key.len() + e.kv.value.len() + prev
}

impl Watcher {
    pub fn new(
        id: WatcherId,
        spec: &WatchSpec,
        mode: Mode,
        next_rev: i64,
        notify: Arc<Notify>,
    ) -> Self {
        Watcher {
            id,
            range: spec.range.clone(),
            filters: spec.filters,
            mode,
            next_rev,
            queue: VecDeque::new(),
            queued_bytes: 0,
            // A zero capacity would make every revision lag; treat it as one.
            capacity_events: spec.queue_events.max(1),
            capacity_bytes: spec.queue_bytes.max(1),
            peak_events: 0,
            peak_bytes: 0,
            lagged: 0,
            notify,
        }
    }

    pub fn queue_is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn queued_events(&self) -> usize {
        self.queue.len()
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Queues one revision's matching events if they fit in both bounds; `false` (and nothing
    /// queued) when they do not, so the revision is never split between queue and history.
    pub fn offer(&mut self, events: Vec<Arc<Event>>) -> bool {
        let bytes: usize = events.iter().map(|e| event_bytes(e)).sum();
        if self.queue.len() + events.len() > self.capacity_events
            || self.queued_bytes + bytes > self.capacity_bytes
        {
            return false;
        }
        self.queue.extend(events);
        self.queued_bytes += bytes;
        self.peak_events = self.peak_events.max(self.queue.len());
        self.peak_bytes = self.peak_bytes.max(self.queued_bytes);
        true
    }

    /// Pops at least `max` events (when that many are queued), extended to the end of the last
    /// revision taken.
    pub fn pop(&mut self, max: usize) -> Vec<Arc<Event>> {
        let mut out: Vec<Arc<Event>> = Vec::new();
        while let Some(front) = self.queue.front() {
            let same_rev = out
                .last()
                .is_some_and(|last| last.kv.mod_revision == front.kv.mod_revision);
            if out.len() >= max.max(1) && !same_rev {
                break;
            }
            if let Some(e) = self.queue.pop_front() {
                self.queued_bytes = self.queued_bytes.saturating_sub(event_bytes(&e));
                out.push(e);
            }
        }
        out
    }

    /// The revision through which every event for this watcher has left the hub: the queue's
    /// first revision − 1, else (catching up) `next_rev − 1`, else (live, nothing queued) the
    /// store's revision `current`.
    pub fn sent_through(&self, current: i64) -> i64 {
        if let Some(front) = self.queue.front() {
            return front.kv.mod_revision - 1;
        }
        match self.mode {
            Mode::CatchUp => self.next_rev - 1,
            Mode::Live => current,
        }
    }

    pub fn stats(&self) -> WatcherStats {
        WatcherStats {
            id: self.id,
            live: self.mode == Mode::Live,
            next_revision: self.next_rev,
            queued_events: self.queue.len(),
            queued_bytes: self.queued_bytes,
            peak_queued_events: self.peak_events,
            peak_queued_bytes: self.peak_bytes,
            capacity_events: self.capacity_events,
            capacity_bytes: self.capacity_bytes,
            lagged: self.lagged,
        }
    }
}
