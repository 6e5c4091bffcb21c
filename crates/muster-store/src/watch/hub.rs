//! [`WatchHub`]: the registry of watchers, the live fan-out (`publish`), the consumer side
//! (`take`, `catch_up`) and progress. See the module doc of [`super`] for the guarantees and
//! why the locking gives them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use muster_types::{ApplyError, Event};
use tokio::sync::Notify;

use super::watcher::{Mode, Watcher};
use super::{
    Batch, Delivery, HistorySource, HubStats, Registered, WatchError, WatchSpec, WatcherId,
    WatcherStats,
};

/// Fans applied events out to watchers. One per node, shared by the applier and the Watch
/// service.
pub struct WatchHub {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The store's revision as of the last publish (equal to the store's own revision whenever
    /// the state machine lock is free).
    current_revision: i64,
    compact_revision: i64,
    next_id: WatcherId,
    watchers: HashMap<WatcherId, Watcher>,
    /// Live single-key watchers, by key: one hash lookup per event.
    by_key: HashMap<Vec<u8>, BTreeSet<WatcherId>>,
    /// Live range watchers, grouped by identical range (many subscribers usually share a
    /// prefix): one range check per distinct range per event.
    by_range: BTreeMap<(Vec<u8>, Vec<u8>), BTreeSet<WatcherId>>,
    published_events: u64,
    catch_up_events: u64,
    lagged: u64,
    compacted: u64,
}

impl State {
    /// Under the state machine lock the hub has seen every applied group, so its revision is
    /// the store's. A mismatch means an apply path did not publish: log it loudly (watchers
    /// could miss events) but do not panic here, which would poison the hub for the applier.
    fn check_in_step(&self, store_revision: i64) {
        if self.current_revision != store_revision {
            tracing::error!(
                hub = self.current_revision,
                store = store_revision,
                "watch hub out of step with the store: an applied group was not published"
            );
        }
    }

    fn index(&mut self, id: WatcherId) {
        let Some(w) = self.watchers.get(&id) else {
            return;
        };
        if w.range.is_single() {
            self.by_key
                .entry(w.range.key.clone())
                .or_default()
                .insert(id);
        } else {
            let k = (w.range.key.clone(), w.range.range_end.clone());
            self.by_range.entry(k).or_default().insert(id);
        }
    }

    fn unindex(&mut self, id: WatcherId) {
        let Some(w) = self.watchers.get(&id) else {
            return;
        };
        if w.range.is_single() {
            if let Some(set) = self.by_key.get_mut(&w.range.key) {
                set.remove(&id);
                if set.is_empty() {
                    self.by_key.remove(&w.range.key);
                }
            }
        } else {
            let k = (w.range.key.clone(), w.range.range_end.clone());
            if let Some(set) = self.by_range.get_mut(&k) {
                set.remove(&id);
                if set.is_empty() {
                    self.by_range.remove(&k);
                }
            }
        }
    }

    fn remove(&mut self, id: WatcherId) -> Option<Watcher> {
        self.unindex(id);
        self.watchers.remove(&id)
    }

    /// Offers one revision's events to every live watcher they match. A watcher whose queue
    /// cannot take its share moves to catch-up at this revision: it will read it (and
    /// everything after) from history, so nothing is lost and nothing is split.
    fn deliver_revision(&mut self, rev: i64, group: &[Arc<Event>]) {
        let mut matched: BTreeMap<WatcherId, Vec<Arc<Event>>> = BTreeMap::new();
        for e in group {
            let by_key = self.by_key.get(&e.kv.key).into_iter().flatten();
            let by_range = self
                .by_range
                .iter()
                .filter(|((key, end), _)| range_contains(key, end, &e.kv.key))
                .flat_map(|(_, ids)| ids);
            for id in by_key.chain(by_range) {
                let Some(w) = self.watchers.get(id) else {
                    continue;
                };
                if rev >= w.next_rev && w.filters.allows(e.kind) {
                    matched.entry(*id).or_default().push(e.clone());
                }
            }
        }
        for (id, events) in matched {
            let Some(w) = self.watchers.get_mut(&id) else {
                continue;
            };
            if !w.offer(events) {
                w.mode = Mode::CatchUp;
                w.next_rev = rev;
                w.lagged += 1;
                self.lagged += 1;
                tracing::debug!(watcher = id, revision = rev, "watcher lagging: catch-up");
                self.unindex(id);
            }
            if let Some(w) = self.watchers.get(&id) {
                w.notify.notify_one();
            }
        }
    }
}

/// `KeyRange::contains` on borrowed parts (the index keys are plain byte vectors).
fn range_contains(key: &[u8], end: &[u8], k: &[u8]) -> bool {
    if end == [0] {
        return k >= key;
    }
    k >= key && k < end
}

impl WatchHub {
    /// A hub for a store at `current_revision`, compacted at `compact_revision`.
    pub fn new(current_revision: i64, compact_revision: i64) -> Self {
        WatchHub {
            state: Mutex::new(State {
                current_revision,
                compact_revision,
                ..State::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the hub lock leaves watchers in an unknown state; delivering
        // from it could break ordering guarantees, so propagate the panic.
        self.state
            .lock()
            .unwrap_or_else(|p| panic!("watch hub lock poisoned: {p}"))
    }

    /// Adds a watcher. `src` must be borrowed from the state machine's read guard, so no apply
    /// runs between reading the store's revision here and the watcher joining live delivery.
    ///
    /// Start revision 0, or one after the current revision, joins live delivery at once. A
    /// start revision at or below the current one starts in catch-up (the consumer's first
    /// `take` says [`Delivery::NeedsCatchUp`]). Below the compacted revision, no watcher is
    /// created. `notify` is woken whenever the watcher has something to deliver.
    pub fn register(
        &self,
        src: &dyn HistorySource,
        spec: &WatchSpec,
        notify: Arc<Notify>,
    ) -> Registered {
        let current = src.current_revision();
        let compact = src.compact_revision();
        let start = spec.start_revision;
        let mut st = self.lock();
        st.check_in_step(current);
        if start > 0 && start < compact {
            return Registered::Compacted {
                compact_revision: compact,
                revision: current,
            };
        }
        let (mode, next_rev) = if start <= 0 {
            (Mode::Live, current + 1)
        } else if start > current {
            (Mode::Live, start)
        } else {
            (Mode::CatchUp, start)
        };
        let id = st.next_id;
        st.next_id += 1;
        let w = Watcher::new(id, spec, mode, next_rev, notify);
        if mode == Mode::CatchUp {
            w.notify.notify_one();
        }
        st.watchers.insert(id, w);
        if mode == Mode::Live {
            st.index(id);
        }
        Registered::Watching {
            id,
            revision: current,
        }
    }

    /// Removes a watcher; `false` when it did not exist.
    pub fn unregister(&self, id: WatcherId) -> bool {
        self.lock().remove(id).is_some()
    }

    /// Delivers one applied group's events (revision order, as apply appends them) to live
    /// watchers. Call with `src` borrowed from the state machine's write guard, after the
    /// group's batch is applied to sled (so the events are in history for anyone catching up),
    /// and for every group — also one without events (a compaction changes no key but moves
    /// the compact revision).
    pub fn publish(&self, src: &dyn HistorySource, events: Vec<Event>) {
        let mut st = self.lock();
        st.current_revision = src.current_revision();
        st.compact_revision = src.compact_revision();
        st.published_events += events.len() as u64;
        if events.is_empty() || st.by_key.is_empty() && st.by_range.is_empty() {
            return;
        }
        let events: Vec<Arc<Event>> = events.into_iter().map(Arc::new).collect();
        for group in events.chunk_by(|a, b| a.kv.mod_revision == b.kv.mod_revision) {
            let rev = group[0].kv.mod_revision;
            st.deliver_revision(rev, group);
        }
    }

    /// After a snapshot replaced the store: events between the old and the new revision were
    /// never published, so every live watcher moves to catch-up from the first revision it
    /// has not been given, and reads the rest from the new history (or learns it was
    /// compacted). Call under the state machine's write guard, after the install.
    pub fn reset(&self, src: &dyn HistorySource) {
        let mut st = self.lock();
        let old = st.current_revision;
        let live: Vec<WatcherId> = st
            .watchers
            .values()
            .filter(|w| w.mode == Mode::Live)
            .map(|w| w.id)
            .collect();
        for id in live {
            st.unindex(id);
            if let Some(w) = st.watchers.get_mut(&id) {
                w.mode = Mode::CatchUp;
                w.next_rev = w.next_rev.max(old + 1);
                w.notify.notify_one();
            }
        }
        st.current_revision = src.current_revision();
        st.compact_revision = src.compact_revision();
        tracing::info!(
            from = old,
            to = st.current_revision,
            "watch hub reset after snapshot install"
        );
    }

    /// The next events for watcher `id` from its live queue: at least `max` (when queued),
    /// extended to a whole revision. Never touches history, so it needs no state machine lock.
    pub fn take(&self, id: WatcherId, max: usize) -> Delivery {
        let mut st = self.lock();
        let revision = st.current_revision;
        let Some(w) = st.watchers.get_mut(&id) else {
            return Delivery::Gone;
        };
        if !w.queue_is_empty() {
            return Delivery::Events(Batch {
                events: w.pop(max),
                revision,
            });
        }
        match w.mode {
            Mode::CatchUp => Delivery::NeedsCatchUp,
            Mode::Live => Delivery::Idle,
        }
    }

    /// Reads the next chunk of history for a watcher in catch-up (about `limit` events, whole
    /// revisions). `src` must be borrowed from the state machine's read guard: when the chunk
    /// reaches the store's current revision, the watcher rejoins live delivery before any
    /// apply can publish the next revision.
    ///
    /// Returns [`Delivery::Compacted`] (and removes the watcher) when the history it needs was
    /// compacted; [`Delivery::Idle`] when it is not catching up (or still has queued events,
    /// which must go first).
    pub fn catch_up(
        &self,
        src: &dyn HistorySource,
        id: WatcherId,
        limit: usize,
    ) -> Result<Delivery, WatchError> {
        let limit = limit.max(1);
        let (range, from, filters) = {
            let st = self.lock();
            let Some(w) = st.watchers.get(&id) else {
                return Ok(Delivery::Gone);
            };
            if w.mode != Mode::CatchUp || !w.queue_is_empty() {
                return Ok(Delivery::Idle);
            }
            (w.range.clone(), w.next_rev, w.filters)
        };
        // The history read runs without the hub lock (other streams keep taking from their
        // queues); `src`'s read guard keeps apply, and so any change to this watcher's mode,
        // out until we are done.
        let read = src.events_since(from, &range, limit)?;
        let mut st = self.lock();
        let events = match read {
            Ok(events) => events,
            Err(ApplyError::Compacted { compact_revision }) => {
                st.remove(id);
                st.compacted += 1;
                return Ok(Delivery::Compacted { compact_revision });
            }
            Err(other) => return Err(WatchError::History(other)),
        };
        let current = src.current_revision();
        st.check_in_step(current);
        // Fewer than `limit` means the scan reached the end of history: caught up.
        let caught_up = events.len() < limit;
        let last_rev = events.last().map(|e| e.kv.mod_revision);
        let events: Vec<Arc<Event>> = events
            .into_iter()
            .filter(|e| filters.allows(e.kind))
            .map(Arc::new)
            .collect();
        let Some(w) = st.watchers.get_mut(&id) else {
            // Unregistered while we read (by another thread than its consumer): drop the chunk.
            return Ok(Delivery::Gone);
        };
        if w.mode != Mode::CatchUp || w.next_rev != from {
            // A concurrent catch_up for the same watcher got there first; this chunk would
            // repeat its events.
            return Ok(Delivery::Idle);
        }
        if caught_up {
            w.mode = Mode::Live;
            w.next_rev = w.next_rev.max(current + 1);
            st.index(id);
        } else if let Some(last) = last_rev {
            w.next_rev = last + 1;
        }
        st.catch_up_events += events.len() as u64;
        Ok(Delivery::Events(Batch {
            events,
            revision: current,
        }))
    }

    /// The revision a stream-wide progress reply may carry for watchers `ids`: every event
    /// at or below it has left the hub for every one of them (taken from the queue or read
    /// from history). With no watchers, the store's revision.
    pub fn progress(&self, ids: &[WatcherId]) -> i64 {
        let st = self.lock();
        let current = st.current_revision;
        ids.iter()
            .filter_map(|id| st.watchers.get(id))
            .map(|w| w.sent_through(current))
            .min()
            .unwrap_or(current)
    }

    /// `Some(store revision)` when watcher `id` is live with nothing queued: a per-watcher
    /// progress notification at that revision is then exact. `None` otherwise (etcd, too,
    /// notifies only synced watchers).
    pub fn synced_revision(&self, id: WatcherId) -> Option<i64> {
        let st = self.lock();
        let w = st.watchers.get(&id)?;
        (w.mode == Mode::Live && w.queue_is_empty()).then_some(st.current_revision)
    }

    /// The store's revision as of the last publish.
    pub fn current_revision(&self) -> i64 {
        self.lock().current_revision
    }

    /// One watcher's queue and position.
    pub fn watcher_stats(&self, id: WatcherId) -> Option<WatcherStats> {
        self.lock().watchers.get(&id).map(Watcher::stats)
    }

    /// Every watcher's stats, by id.
    pub fn all_watcher_stats(&self) -> Vec<WatcherStats> {
        let st = self.lock();
        let mut v: Vec<WatcherStats> = st.watchers.values().map(Watcher::stats).collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// Hub-wide counters and gauges.
    pub fn stats(&self) -> HubStats {
        let st = self.lock();
        let live = st
            .watchers
            .values()
            .filter(|w| w.mode == Mode::Live)
            .count();
        HubStats {
            revision: st.current_revision,
            compact_revision: st.compact_revision,
            watchers: st.watchers.len(),
            live,
            catching_up: st.watchers.len() - live,
            queued_events: st.watchers.values().map(Watcher::queued_events).sum(),
            queued_bytes: st.watchers.values().map(Watcher::queued_bytes).sum(),
            published_events: st.published_events,
            catch_up_events: st.catch_up_events,
            lagged: st.lagged,
            compacted: st.compacted,
        }
    }
}
