//! `muster.raft.v1.RaftTransport`, server side: openraft RPCs from peers, plus writes (over
//! one stream per follower, see `forward_stream.rs`) and read-index requests forwarded by
//! followers, and lease keep-alive / time-to-live requests
//! forwarded to the leader's lease keeper. Payloads are bincode; see `network.rs`.

use std::pin::Pin;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};

use muster_proto::raftpb::raft_transport_server::RaftTransport;
use muster_proto::raftpb::RaftPayload;
use muster_store::raft::{Snapshot, SnapshotData, SnapshotMeta, TypeConfig, Vote};
use muster_types::Command;
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use tonic::{Request, Response, Status, Streaming};

use crate::lease_keeper::LeaseKeeper;
use crate::membership::MembershipChange;
use crate::network::{decode, encode, RemoteRaftError};
use crate::node::Node;

pub struct RaftService {
    pub node: Arc<Node>,
    /// Answers forwarded lease requests, and learns of leases granted through `forward`.
    pub leases: Arc<LeaseKeeper>,
}

fn bad_payload(e: bincode::Error) -> Status {
    Status::invalid_argument(format!("malformed raft payload: {e}"))
}

fn reply<T: serde::Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    encode(v)
        .map(Response::new)
        .map_err(|e| Status::internal(format!("encoding raft reply: {e}")))
}

fn remote<E: std::fmt::Display>(e: E) -> RemoteRaftError {
    RemoteRaftError {
        reason: e.to_string(),
    }
}

/// Replies of an `AppendStream` call.
type AppendReplies = Pin<Box<dyn Stream<Item = Result<RaftPayload, Status>> + Send>>;

/// Answers of a `ForwardStream` call.
type ForwardReplies = Pin<Box<dyn Stream<Item = Result<RaftPayload, Status>> + Send>>;

/// Commands of one `ForwardStream` proposed at once; past this its requests wait, and HTTP/2
/// flow control holds the follower back.
const FORWARD_STREAM_IN_FLIGHT: usize = 256;

/// One `ForwardStream`: its requests (None once they ended) and the commands being proposed.
struct ForwardState {
    requests: Option<Streaming<RaftPayload>>,
    proposing: FuturesUnordered<BoxFuture<'static, Result<RaftPayload, Status>>>,
    node: Arc<Node>,
    leases: Arc<LeaseKeeper>,
}

/// The next answer of a `ForwardStream`, in completion order; takes new requests while it
/// waits. Ends once the requests have ended and every command taken is answered, or with the
/// first malformed request.
async fn next_forward_answer(
    mut st: ForwardState,
) -> Option<(Result<RaftPayload, Status>, ForwardState)> {
    loop {
        let taking = st.requests.is_some() && st.proposing.len() < FORWARD_STREAM_IN_FLIGHT;
        if !taking && st.proposing.is_empty() {
            return None;
        }
        let ForwardState {
            requests,
            proposing,
            ..
        } = &mut st;
        let next_request = async {
            match requests.as_mut() {
                Some(r) => r.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(answer) = proposing.next(), if !proposing.is_empty() => {
                return Some((answer, st));
            }
            item = next_request, if taking => match item {
                Some(Ok(payload)) => match decode::<(u64, Command)>(&payload) {
                    Ok((id, cmd)) => {
                        let (node, leases) = (st.node.clone(), st.leases.clone());
                        st.proposing.push(Box::pin(propose_forwarded(node, leases, id, cmd)));
                    }
                    Err(e) => {
                        st.requests = None;
                        st.proposing.clear();
                        return Some((Err(bad_payload(e)), st));
                    }
                },
                // The follower closed its side (or the connection broke): answer what was
                // taken, then end.
                Some(Err(_)) | None => st.requests = None,
            }
        }
    }
}

/// Proposes one forwarded command on this node's Raft (validated there, never a second hop)
/// and encodes its answer with the follower's id.
async fn propose_forwarded(
    node: Arc<Node>,
    leases: Arc<LeaseKeeper>,
    id: u64,
    cmd: Command,
) -> Result<RaftPayload, Status> {
    // The lease keeper learns of grants and revokes from their answers; only those commands
    // are kept for it.
    let observed = LeaseKeeper::observes(&cmd).then(|| cmd.clone());
    let r = node.write_forwarded(cmd).await;
    if let (Some(cmd), Ok(resp)) = (&observed, &r) {
        leases.observe(cmd, resp);
    }
    encode(&(id, r)).map_err(|e| Status::internal(format!("encoding a forward answer: {e}")))
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    type AppendStreamStream = AppendReplies;
    type ForwardStreamStream = ForwardReplies;

    async fn append_stream(
        &self,
        req: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<AppendReplies>, Status> {
        // Requests are decoded until the first transport or decode error, which ends the input:
        // openraft then answers what it has taken and the stream ends, so replies never get out
        // of step with requests.
        let requests = req
            .into_inner()
            .map(|item| {
                item.ok()
                    .and_then(|p| decode::<AppendEntriesRequest<TypeConfig>>(&p).ok())
            })
            .take_while(|r| std::future::ready(r.is_some()))
            .filter_map(std::future::ready);
        let replies = self.node.raft.stream_append(requests).map(|r| match r {
            Ok(result) => {
                encode(&result).map_err(|e| Status::internal(format!("encoding raft reply: {e}")))
            }
            Err(fatal) => Err(Status::unavailable(format!("raft stopped: {fatal}"))),
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref()).map_err(bad_payload)?;
        reply(&self.node.raft.append_entries(rpc).await.map_err(remote))
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let (pre_vote, rpc): (bool, VoteRequest<TypeConfig>) =
            decode(req.get_ref()).map_err(bad_payload)?;
        let r = if pre_vote {
            self.node.raft.pre_vote(rpc).await
        } else {
            self.node.raft.vote(rpc).await
        };
        reply(&r.map_err(remote))
    }

    async fn transfer_leader(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: TransferLeaderRequest<TypeConfig> = decode(req.get_ref()).map_err(bad_payload)?;
        reply(
            &self
                .node
                .raft
                .handle_transfer_leader(rpc)
                .await
                .map_err(remote),
        )
    }

    async fn hash_kv(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let ask: crate::corruption::HashKvAsk = decode(req.get_ref()).map_err(bad_payload)?;
        reply(&crate::corruption::answer(&self.node, ask).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let (vote, meta, data): (Vote, SnapshotMeta, SnapshotData) =
            decode(req.get_ref()).map_err(bad_payload)?;
        let snapshot = Snapshot {
            meta,
            snapshot: data,
        };
        reply(
            &self
                .node
                .raft
                .install_full_snapshot(vote, snapshot)
                .await
                .map_err(remote),
        )
    }

    async fn forward_stream(
        &self,
        req: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<ForwardReplies>, Status> {
        let state = ForwardState {
            requests: Some(req.into_inner()),
            proposing: FuturesUnordered::new(),
            node: self.node.clone(),
            leases: self.leases.clone(),
        };
        Ok(Response::new(Box::pin(futures::stream::unfold(
            state,
            next_forward_answer,
        ))))
    }

    async fn read_index(
        &self,
        _req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        reply(&self.node.read_index_local().await)
    }

    async fn lease_keep_alive(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let ids: Vec<i64> = decode(req.get_ref()).map_err(bad_payload)?;
        reply(&self.leases.keep_alive_on_leader(&ids).await)
    }

    async fn lease_time_to_live(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let (id, keys): (i64, bool) = decode(req.get_ref()).map_err(bad_payload)?;
        reply(&self.leases.time_to_live_on_leader(id, keys).await)
    }

    async fn change_membership(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let change: MembershipChange = decode(req.get_ref()).map_err(bad_payload)?;
        // Only the local Raft: a forwarded change never takes a second hop.
        reply(&self.node.change_membership_local(change).await)
    }

    async fn notify_removed(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let id: u64 = decode(req.get_ref()).map_err(bad_payload)?;
        if id == self.node.id {
            self.node.mark_removed();
        }
        reply(&())
    }
}
