//! `muster.raft.v1.RaftTransport`, server side: openraft RPCs from peers, plus writes and
//! read-index requests forwarded by followers. Payloads are bincode; see `network.rs`.

use std::sync::Arc;

use muster_proto::raftpb::raft_transport_server::RaftTransport;
use muster_proto::raftpb::RaftPayload;
use muster_store::raft::{Snapshot, SnapshotData, SnapshotMeta, TypeConfig, Vote};
use muster_types::Command;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use tonic::{Request, Response, Status};

use crate::network::{decode, encode, RemoteRaftError};
use crate::node::Node;

pub struct RaftService {
    pub node: Arc<Node>,
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

#[tonic::async_trait]
impl RaftTransport for RaftService {
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

    async fn forward(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let cmd: Command = decode(req.get_ref()).map_err(bad_payload)?;
        // Only the local Raft: a forwarded request never takes a second hop.
        reply(&self.node.write_local(cmd).await)
    }

    async fn read_index(
        &self,
        _req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        reply(&self.node.read_index_local().await)
    }
}
