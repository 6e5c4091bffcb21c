//! A resumable watch: [`WatchStream`] yields whole revisions of events in order, and when the
//! node serving it dies (or stops answering, or loses its leader) resumes by itself on another
//! endpoint from the last delivered revision + 1 — no gap, no duplicate.
//!
//! How the position is kept: `next_rev` is the first revision not yet delivered. It advances
//! past every delivered event, and past progress replies (a progress revision P certifies every
//! event ≤ P was sent before the reply on that stream). A resumed stream starts at `next_rev`;
//! any event below it (there should be none) is dropped. The stream asks for progress every
//! `watch_probe_interval`; no answer within another interval counts as a dead stream. Streams
//! are opened with `hasleader`, so a node cut off from the cluster ends them.
//!
//! A start revision older than the compaction yields [`WatchUpdate::Compacted`] and ends the
//! stream: the caller re-lists and watches again from the revision of its listing + 1.

use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::Stream;
use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::watch_client::WatchClient;
use muster_proto::mvccpb::{self, KeyValue};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::client::Client;
use crate::endpoints::EndpointState;
use crate::error::ClientError;
use crate::kv::prefix_end;
use crate::retry::CallSpec;

/// Options of a watch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchOptions {
    range_end: Vec<u8>,
    prefix: bool,
    start_revision: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
}

impl WatchOptions {
    pub fn new() -> Self {
        Self::default()
    }
    /// Every key starting with the key.
    pub fn with_prefix(mut self) -> Self {
        self.prefix = true;
        self
    }
    /// The half-open range `[key, end)`.
    pub fn with_range_end(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.range_end = end.into();
        self
    }
    /// Deliver history from `rev` (0 = only changes after now).
    pub fn with_start_revision(mut self, rev: i64) -> Self {
        self.start_revision = rev;
        self
    }
    /// Include each event's previous key-value.
    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }
    /// Skip puts.
    pub fn without_puts(mut self) -> Self {
        self.no_put = true;
        self
    }
    /// Skip deletes.
    pub fn without_deletes(mut self) -> Self {
        self.no_delete = true;
        self
    }
}

/// Kind of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    /// For a delete: the key, with `mod_revision` = the deletion's revision.
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
}

impl WatchEvent {
    /// The revision of the change.
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }
}

/// What a [`WatchStream`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchUpdate {
    /// One or more whole revisions of events, in revision order.
    Events {
        /// The serving node's store revision when it sent them.
        revision: i64,
        events: Vec<WatchEvent>,
    },
    /// The stream was re-established on `endpoint`, from `from_revision`, after its node
    /// failed. Informational: nothing was lost.
    Resumed {
        endpoint: String,
        from_revision: i64,
    },
    /// History the watch needs is compacted (up to `compact_revision`): the stream has ended;
    /// re-list, then watch from the listing's revision + 1.
    Compacted { compact_revision: i64 },
}

/// A resumable watch. Errors it yields are informational (it keeps trying) except
/// [`ClientError::WatchCanceled`], after which it ends; it also ends after
/// [`WatchUpdate::Compacted`]. Dropping it cancels the watch.
#[derive(Debug)]
pub struct WatchStream {
    rx: ReceiverStream<Result<WatchUpdate, ClientError>>,
    next_rev: Arc<AtomicI64>,
    serving: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
}

impl WatchStream {
    /// The first revision not delivered yet (0 before the first stream opened).
    pub fn next_revision(&self) -> i64 {
        self.next_rev.load(Ordering::Acquire)
    }

    /// The endpoint (`host:port`) whose stream currently serves the watch, once one is open.
    pub fn endpoint(&self) -> Option<String> {
        self.serving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchUpdate, ClientError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.rx).poll_next(cx)
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Out = mpsc::Sender<Result<WatchUpdate, ClientError>>;

/// An open server stream with its created reply.
struct Opened {
    requests: mpsc::Sender<pb::WatchRequest>,
    inbound: Streaming<pb::WatchResponse>,
    created: pb::WatchResponse,
    endpoint: Arc<EndpointState>,
}

/// Why a serving stream stopped.
enum Ended {
    /// The consumer went away, or the watch finished (compacted, cancelled).
    Done,
    /// The stream broke or went silent: resume elsewhere.
    Broken,
}

impl Client {
    /// Watches `key` (or a range, per `opts`).
    ///
    /// ```no_run
    /// # async fn f(client: muster_client::Client) -> Result<(), muster_client::ClientError> {
    /// use futures::StreamExt;
    /// use muster_client::{WatchOptions, WatchUpdate};
    /// let mut w = client.watch("jobs/", WatchOptions::new().with_prefix());
    /// while let Some(update) = w.next().await {
    ///     match update? {
    ///         WatchUpdate::Events { events, .. } => println!("{} changes", events.len()),
    ///         WatchUpdate::Compacted { compact_revision } => { /* re-list */ break }
    ///         WatchUpdate::Resumed { .. } => {}
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn watch(&self, key: impl Into<Vec<u8>>, opts: WatchOptions) -> WatchStream {
        let key = key.into();
        let range_end = if opts.prefix {
            prefix_end(&key)
        } else {
            opts.range_end.clone()
        };
        let mut filters = Vec::new();
        if opts.no_put {
            filters.push(pb::watch_create_request::FilterType::Noput as i32);
        }
        if opts.no_delete {
            filters.push(pb::watch_create_request::FilterType::Nodelete as i32);
        }
        let create = pb::WatchCreateRequest {
            key,
            range_end,
            start_revision: opts.start_revision,
            prev_kv: opts.prev_kv,
            filters,
            ..Default::default()
        };
        let (tx, rx) = mpsc::channel(64);
        let next_rev = Arc::new(AtomicI64::new(opts.start_revision.max(0)));
        let serving = Arc::new(Mutex::new(None));
        let task =
            tokio::spawn(
                self.clone()
                    .watch_task(create, tx, next_rev.clone(), serving.clone()),
            );
        WatchStream {
            rx: ReceiverStream::new(rx),
            next_rev,
            serving,
            task,
        }
    }

    async fn watch_task(
        self,
        create: pb::WatchCreateRequest,
        out: Out,
        next_rev: Arc<AtomicI64>,
        serving: Arc<Mutex<Option<String>>>,
    ) {
        let mut avoid: Option<String> = None;
        let mut resumed = false;
        loop {
            let from = next_rev.load(Ordering::Acquire);
            let mut spec = CallSpec::read("watch");
            spec.avoid = avoid.take();
            let req = pb::WatchCreateRequest {
                start_revision: from,
                ..create.clone()
            };
            let opened = match self.call(spec, |a| open(a, req.clone())).await {
                Ok(o) => o,
                Err(e) => {
                    // Unreachable for a whole call deadline: report and keep trying. Anything
                    // else the retry loop gave up on is permanent (a bad key, say): end.
                    let keep_going = matches!(e, ClientError::DeadlineExceeded { .. });
                    if out.send(Err(e)).await.is_err() || !keep_going {
                        return;
                    }
                    continue;
                }
            };
            let created = &opened.created;
            if created.canceled {
                let item = if created.compact_revision > 0 {
                    Ok(WatchUpdate::Compacted {
                        compact_revision: created.compact_revision,
                    })
                } else {
                    Err(ClientError::WatchCanceled {
                        reason: created.cancel_reason.clone(),
                    })
                };
                let _ = out.send(item).await;
                return;
            }
            if from == 0 {
                let r = created.header.as_ref().map_or(0, |h| h.revision);
                next_rev.store(r + 1, Ordering::Release);
            }
            if resumed {
                let item = WatchUpdate::Resumed {
                    endpoint: opened.endpoint.authority.clone(),
                    from_revision: next_rev.load(Ordering::Acquire),
                };
                if out.send(Ok(item)).await.is_err() {
                    return;
                }
            }
            let endpoint = opened.endpoint.clone();
            *serving.lock().unwrap_or_else(|p| p.into_inner()) = Some(endpoint.authority.clone());
            match self.serve(opened, &out, &next_rev).await {
                Ended::Done => return,
                Ended::Broken => {
                    tracing::debug!(endpoint = %endpoint.authority, "watch stream broke; resuming");
                    self.endpoints().failed(&endpoint);
                    avoid = Some(endpoint.authority.clone());
                    resumed = true;
                }
            }
        }
    }

    /// Relays one server stream until it ends.
    async fn serve(&self, mut s: Opened, out: &Out, next_rev: &AtomicI64) -> Ended {
        let period = self.options().watch_probe_interval;
        let mut probe = interval_at(Instant::now() + period, period);
        probe.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut asked: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = out.closed() => return Ended::Done,
                msg = s.inbound.message() => {
                    let resp = match msg {
                        Ok(Some(r)) => r,
                        Ok(None) | Err(_) => return Ended::Broken,
                    };
                    asked = None;
                    if let Some(end) = deliver(resp, out, next_rev).await {
                        return end;
                    }
                }
                _ = probe.tick() => {
                    if asked.is_some_and(|t| t.elapsed() >= period) {
                        return Ended::Broken;
                    }
                    if asked.is_none() {
                        let req = pb::WatchRequest {
                            request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(
                                pb::WatchProgressRequest {},
                            )),
                        };
                        if s.requests.send(req).await.is_err() {
                            return Ended::Broken;
                        }
                        asked = Some(Instant::now());
                    }
                }
            }
        }
    }
}

/// Handles one response; `Some` ends the stream.
async fn deliver(resp: pb::WatchResponse, out: &Out, next_rev: &AtomicI64) -> Option<Ended> {
    if resp.canceled {
        let item = if resp.compact_revision > 0 {
            Ok(WatchUpdate::Compacted {
                compact_revision: resp.compact_revision,
            })
        } else {
            Err(ClientError::WatchCanceled {
                reason: resp.cancel_reason,
            })
        };
        let _ = out.send(item).await;
        return Some(Ended::Done);
    }
    let revision = resp.header.as_ref().map_or(0, |h| h.revision);
    let floor = next_rev.load(Ordering::Acquire);
    tracing::trace!(
        revision,
        floor,
        events = resp.events.len(),
        watch_id = resp.watch_id,
        created = resp.created,
        "watch response"
    );
    if resp.events.is_empty() {
        // A progress reply: every event up to `revision` was sent before it.
        if !resp.created && revision >= floor {
            next_rev.store(revision + 1, Ordering::Release);
        }
        return None;
    }
    let events: Vec<WatchEvent> = resp
        .events
        .into_iter()
        .filter_map(event)
        .filter(|e| e.revision() >= floor)
        .collect();
    // Nothing new (all below the floor): keep going.
    let last = events.last().map(WatchEvent::revision)?;
    next_rev.store(last + 1, Ordering::Release);
    if out
        .send(Ok(WatchUpdate::Events { revision, events }))
        .await
        .is_err()
    {
        return Some(Ended::Done);
    }
    None
}

fn event(e: mvccpb::Event) -> Option<WatchEvent> {
    let kind = match mvccpb::event::EventType::try_from(e.r#type).ok()? {
        mvccpb::event::EventType::Put => EventKind::Put,
        mvccpb::event::EventType::Delete => EventKind::Delete,
    };
    Some(WatchEvent {
        kind,
        kv: e.kv?,
        prev_kv: e.prev_kv,
    })
}

/// Opens a server stream and waits for its `created` reply.
async fn open(
    a: crate::retry::Attempt,
    create: pb::WatchCreateRequest,
) -> Result<Opened, ClientError> {
    let (requests, rx) = mpsc::channel(4);
    let first = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
    };
    requests
        .send(first)
        .await
        .map_err(|_| ClientError::Closed)?;
    let mut req = a.request(ReceiverStream::new(rx));
    req.metadata_mut().insert(
        "hasleader",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    let mut inbound = WatchClient::new(a.channel.clone())
        .watch(req)
        .await
        .map_err(|s| a.status(s))?
        .into_inner();
    loop {
        match inbound.message().await {
            Ok(Some(created)) if created.created => {
                return Ok(Opened {
                    requests,
                    inbound,
                    created,
                    endpoint: a.endpoint.clone(),
                })
            }
            Ok(Some(_)) => continue,
            Ok(None) => {
                return Err(ClientError::ConnectionLost {
                    endpoint: a.endpoint.authority.clone(),
                    reason: "watch stream ended before it was created".into(),
                })
            }
            Err(s) => return Err(a.status(s)),
        }
    }
}
