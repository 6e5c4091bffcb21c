//! The watch hub: fans applied events out to watchers, in revision order, with etcd's watch
//! guarantees (ordered, unique, reliable, atomic, resumable, bookmarkable). This module owns the
//! watchers' state — what each watches, how far it has got, its bounded live queue — and the
//! rules for moving a watcher between live delivery and catch-up from history. It does not own
//! the wire protocol (the Watch gRPC service does) nor the history itself (the MVCC keyspace).
//!
//! How events reach a watcher:
//! - **Live**: the applier calls [`WatchHub::publish`] after each applied group, while it still
//!   holds the state machine's write lock and after the group's sled batch is applied. Each
//!   live watcher whose range matches gets the events of whole revisions pushed to its queue.
//! - **Catch-up**: a watcher that starts in the past, or whose queue would overflow, is taken
//!   out of live delivery and fed from the history key space ([`HistorySource::events_since`]),
//!   one bounded chunk at a time, by [`WatchHub::catch_up`]. The chunk that reaches the store's
//!   current revision switches the watcher back to live.
//!
//! Why no event can fall between catch-up and live delivery: `register` and `catch_up` take the
//! history as `&dyn HistorySource` borrowed from the state machine's *read* guard, and
//! `publish` runs under its *write* guard. So while a watcher reads history and decides it is
//! caught up, no apply can publish; the first revision it receives live is exactly the one after
//! the last it read. (Lock order is always: state machine lock, then the hub's own mutex.)
//!
//! Memory: a live queue never exceeds its capacity (events and bytes, per watcher); a watcher
//! that would exceed it switches to catch-up instead of buffering or being dropped. Catch-up
//! holds one chunk at a time (≈ the chunk limit, rounded up to a whole revision).
//!
//! Layout:
//! - `mod.rs`: the public types ([`WatchSpec`], [`Filters`], [`Delivery`], stats) and
//!   [`HistorySource`], implemented by [`Mvcc`].
//! - `watcher`: one watcher's state and its bounded queue.
//! - `hub`: [`WatchHub`]: register, publish, take, catch up, progress, reset after a snapshot.
//! - `tests_*`: unit tests with synthetic events (`tests_hub`) and against a real [`Mvcc`]
//!   (`tests_mvcc`).

mod hub;
mod watcher;

#[cfg(test)]
mod test_util;
#[cfg(test)]
mod tests_hub;
#[cfg(test)]
mod tests_mvcc;

use std::sync::Arc;

use muster_types::{ApplyError, Event, EventKind, KeyRange};

pub use hub::WatchHub;

use crate::error::StoreError;
use crate::mvcc::Mvcc;

/// A watcher's id inside the hub (unique per node; not the client-visible watch id).
pub type WatcherId = u64;

/// Event kinds a watcher does not want (etcd's NOPUT / NODELETE filters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Filters {
    pub no_put: bool,
    pub no_delete: bool,
}

impl Filters {
    /// Whether an event of `kind` passes the filters.
    pub fn allows(&self, kind: EventKind) -> bool {
        match kind {
            EventKind::Put => !self.no_put,
            EventKind::Delete => !self.no_delete,
        }
    }
}

/// What a new watcher asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSpec {
    pub range: KeyRange,
    /// First revision to deliver, inclusive; 0 = only changes after the current revision.
    pub start_revision: i64,
    pub filters: Filters,
    /// Whether the consumer wants `prev_kv` on events. The hub keeps events whole (they are
    /// shared between watchers); the consumer strips `prev_kv` when this is false.
    pub prev_kv: bool,
    /// Most events the live queue holds before the watcher is moved to catch-up (≥ 1).
    pub queue_events: usize,
    /// Most bytes (keys + values, prev_kv included) the live queue holds (≥ 1).
    pub queue_bytes: usize,
}

/// The result of [`WatchHub::register`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// The watcher exists. `revision` is the store's current revision at registration: with
    /// start revision 0, every event after it will be delivered.
    Watching { id: WatcherId, revision: i64 },
    /// The start revision is below the compacted revision; no watcher was created.
    Compacted {
        compact_revision: i64,
        revision: i64,
    },
}

/// Events for one watcher: whole revisions, in revision order, never split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// May be empty after a catch-up chunk whose events were all filtered out.
    pub events: Vec<Arc<Event>>,
    /// The store's revision when the batch was taken (the response header revision).
    pub revision: i64,
}

/// What [`WatchHub::take`] or [`WatchHub::catch_up`] has for a watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Send these.
    Events(Batch),
    /// The live queue is empty and the watcher is behind: call [`WatchHub::catch_up`] with the
    /// history borrowed from the state machine's read guard. (Only from `take`.)
    NeedsCatchUp,
    /// Nothing to send until the next publish.
    Idle,
    /// The watcher needed history that compaction removed; it has been removed from the hub.
    /// Tell the client (etcd: `compact_revision` set, cancelled). (Only from `catch_up`.)
    Compacted { compact_revision: i64 },
    /// No such watcher (it was unregistered).
    Gone,
}

/// A watcher's queue and position, for metrics, tests and benchmarks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatcherStats {
    pub id: WatcherId,
    /// Live delivery (false = catching up from history).
    pub live: bool,
    /// Next revision the hub will hand this watcher (queued events are below it).
    pub next_revision: i64,
    pub queued_events: usize,
    pub queued_bytes: usize,
    /// The most events / bytes the queue ever held at once.
    pub peak_queued_events: usize,
    pub peak_queued_bytes: usize,
    pub capacity_events: usize,
    pub capacity_bytes: usize,
    /// Times this watcher fell behind and moved to catch-up.
    pub lagged: u64,
}

/// Hub-wide counters and gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubStats {
    /// The store revision of the last publish.
    pub revision: i64,
    pub compact_revision: i64,
    pub watchers: usize,
    pub live: usize,
    pub catching_up: usize,
    /// Events held in all live queues now (an event shared by n watchers counts n times).
    pub queued_events: usize,
    pub queued_bytes: usize,
    /// Events handed to `publish` since start.
    pub published_events: u64,
    /// Events delivered through catch-up reads since start.
    pub catch_up_events: u64,
    /// Times any watcher fell behind and moved to catch-up.
    pub lagged: u64,
    /// Watchers removed because their history was compacted.
    pub compacted: u64,
}

/// A failure inside the hub: storage failures are fatal to the node, as everywhere.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// The history refused a read for a reason other than compaction (a bug: the hub only
    /// reads at or after the compact revision and at most up to the current one).
    #[error("history read refused: {0}")]
    History(ApplyError),
}

/// Where catch-up reads from. Implementors must be borrowed from under the state machine's
/// lock (read guard for `register`/`catch_up`, write guard for `publish`): that borrow is what
/// orders hub calls against apply.
pub trait HistorySource {
    /// The store's revision.
    fn current_revision(&self) -> i64;
    /// The compacted revision (0 when never compacted).
    fn compact_revision(&self) -> i64;
    /// Events with revision ≥ `from` on keys in `range`, in revision order, stopping after
    /// `limit` events but never inside a revision (see [`Mvcc::events_since`]).
    fn events_since(
        &self,
        from: i64,
        range: &KeyRange,
        limit: usize,
    ) -> Result<Result<Vec<Event>, ApplyError>, StoreError>;
}

impl HistorySource for Mvcc {
    fn current_revision(&self) -> i64 {
        Mvcc::current_revision(self)
    }

    fn compact_revision(&self) -> i64 {
        Mvcc::compact_revision(self)
    }

    fn events_since(
        &self,
        from: i64,
        range: &KeyRange,
        limit: usize,
    ) -> Result<Result<Vec<Event>, ApplyError>, StoreError> {
        Mvcc::events_since(self, from, range, limit)
    }
}
