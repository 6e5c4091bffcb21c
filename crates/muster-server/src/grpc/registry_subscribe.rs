//! `Registry.Subscribe`: one watcher on a service's key prefix in the node's watch hub,
//! decoded into instance events.
//!
//! With `start_revision` 0 the stream opens with a snapshot of the current instances, read
//! under the same state-machine read lock that registers the watcher from the next revision:
//! no change can fall between the snapshot and the first event. With a start revision the
//! stream replays changes from there (resume after the last revision seen + 1); a compacted
//! start revision gets one reply with `compact_revision` set, and the stream ends.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use muster_proto::registrypb as pb;
use muster_store::watch::{Delivery, Filters, Registered, WatchSpec, WatcherId};
use muster_types::pb_registry::instance_to_pb;
use muster_types::registry::{Instance, InstanceKey, ServiceName};
use muster_types::{Event, EventKind, RangeRequest};
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::error::ServerError;
use crate::node::Node;

pub type SubscribeStream =
    Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

/// Responses buffered towards a slow subscriber before its watcher falls back to catch-up.
const STREAM_BUFFER: usize = 16;

fn upsert(i: Instance, lease: i64, revision: i64) -> pb::InstanceEvent {
    pb::InstanceEvent {
        kind: pb::instance_event::Kind::Upsert as i32,
        instance: Some(instance_to_pb(i, lease, revision)),
        revision,
    }
}

/// An instance event from a key event; keys under the prefix that are not instances are
/// skipped. A DELETE carries the last known state when the event has it (prev_kv), else the
/// key fields only.
fn instance_event(e: &Event) -> Option<pb::InstanceEvent> {
    let key = InstanceKey::parse(&e.kv.key)?;
    let revision = e.kv.mod_revision;
    match e.kind {
        EventKind::Put => {
            let i = Instance::from_json(&e.kv.value).filter(|i| i.key() == key)?;
            Some(upsert(i, e.kv.lease, revision))
        }
        EventKind::Delete => {
            let instance = match e
                .prev_kv
                .as_ref()
                .and_then(|p| Instance::from_json(&p.value))
            {
                Some(i) => instance_to_pb(
                    i,
                    e.prev_kv.as_ref().map(|p| p.lease).unwrap_or(0),
                    revision,
                ),
                None => pb::Instance {
                    namespace: key.namespace,
                    group: key.group,
                    service: key.service,
                    instance_id: key.instance_id,
                    mod_revision: revision,
                    ..Default::default()
                },
            };
            Some(pb::InstanceEvent {
                kind: pb::instance_event::Kind::Delete as i32,
                instance: Some(instance),
                revision,
            })
        }
    }
}

/// Starts a subscription stream.
pub async fn subscribe(
    node: Arc<Node>,
    req: pb::SubscribeRequest,
) -> Result<SubscribeStream, ServerError> {
    let service = ServiceName::new(&req.namespace, &req.group, &req.service)?;
    if req.start_revision < 0 {
        return Err(ServerError::Validation(
            muster_types::ValidationError::InvalidArgument {
                field: "start_revision",
                reason: "must not be negative".into(),
            },
        ));
    }
    if req.start_revision == 0 {
        // The snapshot is as fresh as a linearizable Discover.
        node.linearizable_barrier().await?;
    }
    let cfg = &node.config.watch;
    let notify = Arc::new(Notify::new());
    let hub = node.sm.hub().clone();
    let (first, registered) = {
        let sm = node.sm.read();
        let mut spec = WatchSpec {
            range: service.range(),
            start_revision: req.start_revision,
            filters: Filters::default(),
            prev_kv: true,
            queue_events: cfg.queue_events,
            queue_bytes: cfg.queue_bytes,
        };
        let first = if req.start_revision == 0 {
            let read = RangeRequest {
                range: service.range(),
                serializable: true,
                ..Default::default()
            };
            let resp = sm.mvcc.range(&read)??;
            let revision = sm.mvcc.current_revision();
            spec.start_revision = revision + 1;
            let events = resp
                .kvs
                .iter()
                .filter_map(|kv| {
                    let i = Instance::from_json(&kv.value)?;
                    (InstanceKey::parse(&kv.key).as_ref() == Some(&i.key()))
                        .then(|| upsert(i, kv.lease, kv.mod_revision))
                })
                .collect();
            Some(pb::SubscribeResponse {
                revision,
                events,
                snapshot: true,
                compact_revision: 0,
            })
        } else {
            None
        };
        (first, hub.register(&sm.mvcc, &spec, notify.clone()))
    };
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let id = match registered {
        Registered::Compacted {
            compact_revision,
            revision,
        } => {
            let _ = tx.try_send(Ok(pb::SubscribeResponse {
                revision,
                events: vec![],
                snapshot: false,
                compact_revision,
            }));
            return Ok(Box::pin(ReceiverStream::new(rx)));
        }
        Registered::Watching { id, .. } => id,
    };
    if let Some(first) = first {
        let _ = tx.try_send(Ok(first));
    }
    tokio::spawn(drive(node, id, notify, tx));
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Moves events from the hub to the subscriber until it goes away.
async fn drive(
    node: Arc<Node>,
    id: WatcherId,
    notify: Arc<Notify>,
    tx: mpsc::Sender<Result<pb::SubscribeResponse, Status>>,
) {
    let hub = node.sm.hub().clone();
    let batch = node.config.watch.catch_up_batch;
    loop {
        let delivery = match hub.take(id, batch) {
            Delivery::NeedsCatchUp => {
                let sm = node.sm.read();
                match hub.catch_up(&sm.mvcc, id, batch) {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = tx.try_send(Err(Status::internal(format!("watch catch-up: {e}"))));
                        break;
                    }
                }
            }
            d => d,
        };
        match delivery {
            Delivery::Events(b) => {
                let events: Vec<_> = b.events.iter().filter_map(|e| instance_event(e)).collect();
                if events.is_empty() {
                    continue;
                }
                let revision = events.last().map(|e| e.revision).unwrap_or(b.revision);
                let resp = pb::SubscribeResponse {
                    revision,
                    events,
                    snapshot: false,
                    compact_revision: 0,
                };
                if tx.send(Ok(resp)).await.is_err() {
                    break;
                }
            }
            Delivery::Compacted { compact_revision } => {
                let resp = pb::SubscribeResponse {
                    revision: hub.current_revision(),
                    events: vec![],
                    snapshot: false,
                    compact_revision,
                };
                let _ = tx.send(Ok(resp)).await;
                break;
            }
            Delivery::Gone => break,
            Delivery::Idle | Delivery::NeedsCatchUp => {
                // notify_one keeps a permit, so a publish between `take` and here is not lost.
                tokio::select! {
                    _ = notify.notified() => {}
                    _ = tx.closed() => break,
                }
            }
        }
    }
    hub.unregister(id);
}
