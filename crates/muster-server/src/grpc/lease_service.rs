//! etcd `Lease` service over gRPC: LeaseGrant, LeaseRevoke, LeaseKeepAlive (a bidirectional
//! stream), LeaseTimeToLive and LeaseLeases. Decode, call `crate::services::lease`, encode;
//! the keep-alive stream's protocol (batching, flow control) lives here.
//!
//! LeaseGrant and LeaseRevoke accept the metadata [`REQUEST_ID_HEADER`]: retries of one request
//! carrying the same id are applied once (see the keeper's module doc).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::lease_server::Lease;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::request_ctx;
use crate::node::Node;
use crate::services::lease::Leases;

/// Metadata naming one logical request; the same on each of its retries (e.g. a UUID).
pub const REQUEST_ID_HEADER: &str = "x-muster-request-id";

/// Most keep-alives of one stream renewed (or forwarded) together.
const MAX_KEEP_ALIVE_BATCH: usize = 8192;
/// Keep-alives read from a stream but not yet renewed. Past this the stream is not read
/// until renewals catch up (HTTP/2 flow control then slows the client).
const MAX_QUEUED_KEEP_ALIVES: usize = 65_536;

pub struct LeaseService {
    pub node: Arc<Node>,
    pub leases: Leases,
}

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send + 'static>>;

/// Serves one keep-alive stream: a reader task drains the requests as fast as they arrive,
/// and this loop renews whatever has queued up with one call (one leadership check, at most
/// one forward for the whole batch), replying per lease in request order.
///
/// The reader is separate because HTTP/2 (h2) closes a connection with ENHANCE_YOUR_CALM
/// when too many small DATA frames sit unread (about 2,000 keep-alives with default windows):
/// a client renewing thousands of leases on one stream, as etcd clients do, must never wait
/// on our renewals. A failure (no leader, leader unreachable) ends the stream with its status,
/// as etcd does; clients then reopen it, possibly on another node.
async fn serve_keep_alives(
    node: Arc<Node>,
    leases: Leases,
    mut inbound: Streaming<pb::LeaseKeepAliveRequest>,
    tx: mpsc::Sender<Result<pb::LeaseKeepAliveResponse, Status>>,
) {
    let (ids_tx, mut ids_rx) = mpsc::channel::<i64>(MAX_QUEUED_KEEP_ALIVES);
    let reader = tokio::spawn(async move {
        // Ends when the client closes its side or the connection breaks: nothing to answer.
        while let Ok(Some(r)) = inbound.message().await {
            if ids_tx.send(r.id).await.is_err() {
                break;
            }
        }
    });
    while let Some(first) = ids_rx.recv().await {
        let mut ids = vec![first];
        while ids.len() < MAX_KEEP_ALIVE_BATCH {
            match ids_rx.try_recv() {
                Ok(id) => ids.push(id),
                Err(_) => break,
            }
        }
        match leases.keep_alive(&ids).await {
            Ok(renewed) => {
                let header = node.header(node.sm.read().mvcc.current_revision());
                for (id, ttl) in renewed {
                    let reply = pb::LeaseKeepAliveResponse {
                        header: Some(header),
                        id,
                        ttl,
                    };
                    if tx.send(Ok(reply)).await.is_err() {
                        reader.abort();
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::debug!(node_id = node.id, "keep-alive stream ends: {e}");
                let _ = tx.send(Err(e.into())).await;
                break;
            }
        }
    }
    reader.abort();
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let ctx = request_ctx(&req)?;
        let r = req.into_inner();
        let g = self.leases.grant(r.id, r.ttl, &ctx).await?;
        Ok(Response::new(pb::LeaseGrantResponse {
            header: Some(self.node.header(g.revision)),
            id: g.id,
            ttl: g.ttl_secs,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let ctx = request_ctx(&req)?;
        let revision = self.leases.revoke(req.into_inner().id, &ctx).await?;
        Ok(Response::new(pb::LeaseRevokeResponse {
            header: Some(self.node.header(revision)),
        }))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let (tx, rx) = mpsc::channel(MAX_KEEP_ALIVE_BATCH);
        tokio::spawn(serve_keep_alives(
            self.node.clone(),
            self.leases.clone(),
            req.into_inner(),
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let r = req.into_inner();
        let t = self.leases.time_to_live(r.id, r.keys).await?;
        Ok(Response::new(pb::LeaseTimeToLiveResponse {
            header: Some(self.node.header(t.revision)),
            id: t.id,
            ttl: t.ttl_secs,
            granted_ttl: t.granted_ttl_secs,
            keys: t.keys,
        }))
    }

    async fn lease_leases(
        &self,
        _req: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let (revision, ids) = self.leases.leases().await?;
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(self.node.header(revision)),
            leases: ids.into_iter().map(|id| pb::LeaseStatus { id }).collect(),
        }))
    }
}
