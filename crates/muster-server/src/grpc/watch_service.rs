//! etcd `Watch` service: one bidirectional stream carries many watchers. This file owns the
//! wire protocol — create (validation, per-stream ids, `created` replies in request order),
//! cancel, progress requests, periodic progress notifications, `hasleader`, the per-stream
//! watcher limit, and cutting events into responses (whole revisions; fragments on request) —
//! and drives the stream's watchers through the node's [`WatchHub`]: live events from their
//! queues, catch-up chunks read from history under the state machine's read lock.
//!
//! One task per stream does everything in order, so a reply to a request never overtakes the
//! events before it, and a slow client holds back only its own stream: the bounded channel to
//! gRPC fills, this task waits, the stream's watchers' queues fill and they move to catch-up.
//! Memory per stream stays at `stream_buffer` responses plus each watcher's bounded queue.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::watch_server::Watch;
use muster_store::watch::{
    Batch, Delivery, Filters, Registered, WatchError, WatchHub, WatchSpec, WatcherId,
};
use muster_types::KeyRange;
use tokio::sync::{mpsc, Notify};
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

mod responses;

use responses::cut_responses;

use crate::config::WatchConfig;
use crate::error::{RaftPathError, ServerError};
use crate::node::Node;

/// gRPC metadata with which a client asks for streams that fail while the node knows no leader
/// (Go clientv3's `WithRequireLeader`).
const REQUIRE_LEADER_KEY: &str = "hasleader";
/// The watch id of a stream-wide progress reply, and of a failed create (as in etcd).
const NO_WATCH_ID: i64 = -1;

pub struct WatchService {
    pub node: Arc<Node>,
}

type Out = mpsc::Sender<Result<pb::WatchResponse, Status>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ReceiverStream<Result<pb::WatchResponse, Status>>;

    async fn watch(
        &self,
        req: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let require_leader = req
            .metadata()
            .get(REQUIRE_LEADER_KEY)
            .and_then(|v| v.to_str().ok())
            == Some("true");
        if require_leader && self.node.current_leader().is_none() {
            return Err(ServerError::from(RaftPathError::NoLeader).into());
        }
        let (tx, rx) = mpsc::channel(self.node.config.watch.stream_buffer);
        let session = Session {
            hub: self.node.sm.hub().clone(),
            cfg: self.node.config.watch.clone(),
            node: self.node.clone(),
            out: tx,
            notify: Arc::new(Notify::new()),
            watchers: BTreeMap::new(),
            next_auto_id: 0,
            require_leader,
        };
        tokio::spawn(session.run(req.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// `resp` marked as a `created` reply.
fn created(mut resp: pb::WatchResponse) -> pb::WatchResponse {
    resp.created = true;
    resp
}

/// The client went away (or the stream must end); the session stops.
struct Closed;

/// One watcher of this stream.
struct Entry {
    hub_id: WatcherId,
    prev_kv: bool,
    fragment: bool,
    progress_notify: bool,
    /// Events were sent since the last progress tick (etcd notifies only idle watchers).
    sent_since_tick: bool,
}

/// One Watch stream. Dropping it unregisters its watchers, however the stream ends.
struct Session {
    node: Arc<Node>,
    hub: Arc<WatchHub>,
    cfg: WatchConfig,
    out: Out,
    /// Woken by the hub when one of this stream's watchers has something to deliver.
    notify: Arc<Notify>,
    /// By client-visible watch id.
    watchers: BTreeMap<i64, Entry>,
    next_auto_id: i64,
    require_leader: bool,
}

impl Drop for Session {
    fn drop(&mut self) {
        for e in self.watchers.values() {
            self.hub.unregister(e.hub_id);
        }
    }
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<pb::WatchRequest>) {
        let period = self.cfg.progress_interval;
        let mut progress = interval_at(Instant::now() + period, period);
        progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let leader_period = self.node.config.raft.election_max;
        let mut leader_check = interval_at(Instant::now() + leader_period, leader_period);
        let mut leaderless_checks = 0u32;
        let mut inbound_open = true;
        // Some watcher may have more to send right away (no need to wait for a wake-up).
        let mut busy = false;
        loop {
            let step = tokio::select! {
                biased;
                _ = self.out.closed() => Err(Closed),
                msg = inbound.next(), if inbound_open => match msg {
                    Some(Ok(req)) => self.handle(req).await,
                    Some(Err(status)) => {
                        tracing::debug!(%status, "watch stream: client side failed");
                        Err(Closed)
                    }
                    // The client closed its side; etcd keeps delivering until it hangs up.
                    None => {
                        inbound_open = false;
                        Ok(())
                    }
                },
                _ = progress.tick() => self.progress_notify().await,
                // As etcd, a `hasleader` stream ends once its member has lost the leader. (With
                // pre-vote, openraft keeps an isolated follower's last leader id until a real
                // election starts, so a partitioned follower is noticed only then.)
                _ = leader_check.tick(), if self.require_leader => {
                    leaderless_checks = match self.node.current_leader() {
                        Some(_) => 0,
                        None => leaderless_checks + 1,
                    };
                    // Two checks an election timeout apart: the cluster had time to elect.
                    if leaderless_checks >= 2 {
                        let no_leader = ServerError::from(RaftPathError::NoLeader);
                        let _ = self.out.send(Err(no_leader.into())).await;
                        Err(Closed)
                    } else {
                        Ok(())
                    }
                }
                _ = self.notify.notified(), if !busy => Ok(()),
                _ = std::future::ready(()), if busy => Ok(()),
            };
            if step.is_err() {
                return;
            }
            match self.pump_round().await {
                Ok(more) => busy = more,
                Err(Closed) => return,
            }
        }
    }

    async fn send(&self, resp: pb::WatchResponse) -> Result<(), Closed> {
        self.out.send(Ok(resp)).await.map_err(|_| Closed)
    }

    fn response(&self, watch_id: i64, revision: i64) -> pb::WatchResponse {
        pb::WatchResponse {
            header: Some(self.node.header(revision)),
            watch_id,
            ..Default::default()
        }
    }

    async fn handle(&mut self, req: pb::WatchRequest) -> Result<(), Closed> {
        use pb::watch_request::RequestUnion;
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => self.cancel(c.watch_id).await,
            Some(RequestUnion::ProgressRequest(_)) => {
                let ids: Vec<WatcherId> = self.watchers.values().map(|e| e.hub_id).collect();
                // Revision 1 holds no events, so a floor of 1 certifies nothing false, and a
                // zero revision would not read as a progress reply to Go clients.
                let rev = self.hub.progress(&ids).max(1);
                self.send(self.response(NO_WATCH_ID, rev)).await
            }
            None => Ok(()),
        }
    }

    /// Checks a create request; `Err` is the cancel reason the client gets.
    fn validate(&self, c: &pb::WatchCreateRequest) -> Result<(KeyRange, Filters), String> {
        if c.watch_id < 0 {
            return Err("etcdserver: watch_id must not be negative".into());
        }
        if c.watch_id != 0 && self.watchers.contains_key(&c.watch_id) {
            return Err("mvcc: duplicate watch ID provided on the WatchStream".into());
        }
        let max = self.cfg.max_watchers_per_stream;
        if self.watchers.len() >= max {
            return Err(format!(
                "muster: too many watchers on this stream (limit {max}); open another stream"
            ));
        }
        if c.start_revision < 0 {
            return Err("etcdserver: start_revision must not be negative".into());
        }
        // etcd: an empty key means "\0", so an empty key with range_end "\0" watches everything.
        let key = if c.key.is_empty() {
            vec![0]
        } else {
            c.key.clone()
        };
        let range = KeyRange::new(key, c.range_end.clone());
        // The same key limits as a Range's.
        self.node
            .config
            .limits
            .check_read(&range)
            .map_err(|e| e.to_string())?;
        if !range.is_single()
            && range
                .end_bound()
                .is_some_and(|end| range.key.as_slice() >= end)
        {
            return Err("mvcc: watcher range is empty".into());
        }
        let mut filters = Filters::default();
        for f in &c.filters {
            match pb::watch_create_request::FilterType::try_from(*f) {
                Ok(pb::watch_create_request::FilterType::Noput) => filters.no_put = true,
                Ok(pb::watch_create_request::FilterType::Nodelete) => filters.no_delete = true,
                Err(_) => return Err(format!("etcdserver: unknown watch filter {f}")),
            }
        }
        Ok((range, filters))
    }

    fn assign_id(&mut self, requested: i64) -> i64 {
        if requested != 0 {
            return requested;
        }
        // As etcd: server-assigned ids count up from 0, skipping ids the client chose.
        while self.watchers.contains_key(&self.next_auto_id) {
            self.next_auto_id += 1;
        }
        let id = self.next_auto_id;
        self.next_auto_id += 1;
        id
    }

    async fn create(&mut self, c: pb::WatchCreateRequest) -> Result<(), Closed> {
        let (range, filters) = match self.validate(&c) {
            Ok(v) => v,
            Err(reason) => {
                tracing::debug!(%reason, "watch create refused");
                let mut r = self.response(NO_WATCH_ID, self.hub.current_revision());
                r.created = true;
                r.canceled = true;
                r.cancel_reason = reason;
                return self.send(r).await;
            }
        };
        let spec = WatchSpec {
            range,
            start_revision: c.start_revision,
            filters,
            prev_kv: c.prev_kv,
            queue_events: self.cfg.queue_events,
            queue_bytes: self.cfg.queue_bytes,
        };
        // Under the read lock: no apply can publish while the watcher joins the hub.
        let registered = {
            let sm = self.node.sm.read();
            self.hub.register(&sm.mvcc, &spec, self.notify.clone())
        };
        let watch_id = self.assign_id(c.watch_id);
        match registered {
            Registered::Watching { id, revision } => {
                self.watchers.insert(
                    watch_id,
                    Entry {
                        hub_id: id,
                        prev_kv: c.prev_kv,
                        fragment: c.fragment,
                        progress_notify: c.progress_notify,
                        sent_since_tick: false,
                    },
                );
                self.send(created(self.response(watch_id, revision))).await
            }
            Registered::Compacted {
                compact_revision,
                revision,
            } => {
                // As etcd: the watch is created, then cancelled for the compaction.
                self.send(created(self.response(watch_id, revision)))
                    .await?;
                self.send_compacted(watch_id, compact_revision).await
            }
        }
    }

    async fn send_compacted(&self, watch_id: i64, compact_revision: i64) -> Result<(), Closed> {
        let mut r = self.response(watch_id, self.hub.current_revision());
        r.canceled = true;
        r.compact_revision = compact_revision;
        r.cancel_reason = muster_types::ApplyError::Compacted { compact_revision }.to_string();
        self.send(r).await
    }

    async fn cancel(&mut self, watch_id: i64) -> Result<(), Closed> {
        // As etcd: cancelling an unknown id gets no reply.
        let Some(e) = self.watchers.remove(&watch_id) else {
            return Ok(());
        };
        self.hub.unregister(e.hub_id);
        let mut r = self.response(watch_id, self.hub.current_revision());
        r.canceled = true;
        self.send(r).await
    }

    /// Periodic progress for watchers that asked, had no events since the last tick, and are
    /// caught up (so the revision is exact for them).
    async fn progress_notify(&mut self) -> Result<(), Closed> {
        let mut due = Vec::new();
        for (watch_id, e) in self.watchers.iter_mut() {
            let idle = !std::mem::replace(&mut e.sent_since_tick, false);
            if e.progress_notify && idle {
                if let Some(rev) = self.hub.synced_revision(e.hub_id) {
                    due.push((*watch_id, rev));
                }
            }
        }
        for (watch_id, rev) in due {
            self.send(self.response(watch_id, rev)).await?;
        }
        Ok(())
    }

    /// One pass over the stream's watchers, each sending at most one batch, so a busy watcher
    /// cannot starve the others or the stream's requests. Returns whether any had work.
    async fn pump_round(&mut self) -> Result<bool, Closed> {
        let mut busy = false;
        let ids: Vec<(i64, WatcherId)> =
            self.watchers.iter().map(|(w, e)| (*w, e.hub_id)).collect();
        for (watch_id, hub_id) in ids {
            let max = self.cfg.catch_up_batch;
            let delivery = match self.hub.take(hub_id, max) {
                Delivery::NeedsCatchUp => self.catch_up(hub_id).await?,
                d => d,
            };
            match delivery {
                Delivery::Events(batch) => {
                    busy = true;
                    self.send_events(watch_id, batch).await?;
                }
                Delivery::NeedsCatchUp => busy = true,
                Delivery::Compacted { compact_revision } => {
                    self.watchers.remove(&watch_id);
                    self.send_compacted(watch_id, compact_revision).await?;
                }
                Delivery::Gone => {
                    self.watchers.remove(&watch_id);
                }
                Delivery::Idle => {}
            }
        }
        Ok(busy)
    }

    /// Reads the watcher's next history chunk under the state machine's read lock. A storage
    /// failure ends the stream with Internal (the applier hits the same disk and stops the node).
    async fn catch_up(&self, hub_id: WatcherId) -> Result<Delivery, Closed> {
        let read = {
            let sm = self.node.sm.read();
            self.hub.catch_up(&sm.mvcc, hub_id, self.cfg.catch_up_batch)
        };
        match read {
            Ok(d) => Ok(d),
            Err(e) => {
                tracing::error!(error = %e, "watch catch-up failed");
                let err = match e {
                    WatchError::Storage(s) => ServerError::Storage(s),
                    WatchError::History(a) => ServerError::Apply(a),
                };
                let _ = self.out.send(Err(err.into())).await;
                Err(Closed)
            }
        }
    }

    async fn send_events(&mut self, watch_id: i64, batch: Batch) -> Result<(), Closed> {
        if batch.events.is_empty() {
            return Ok(());
        }
        let Some(e) = self.watchers.get_mut(&watch_id) else {
            return Ok(());
        };
        e.sent_since_tick = true;
        let (prev_kv, fragment) = (e.prev_kv, e.fragment);
        let parts = cut_responses(
            &batch.events,
            prev_kv,
            fragment,
            self.cfg.max_response_bytes,
        );
        for (events, more_fragments) in parts {
            let mut r = self.response(watch_id, batch.revision);
            r.events = events;
            r.fragment = more_fragments;
            self.send(r).await?;
        }
        Ok(())
    }
}
