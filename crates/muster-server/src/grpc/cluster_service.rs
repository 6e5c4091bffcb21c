//! etcd `Cluster` service: MemberList from the Raft membership. Membership changes arrive with
//! the membership work (learner add, promote, remove); until then they are Unimplemented.

use openraft::async_runtime::watch::WatchReceiver;
use std::sync::Arc;

use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::cluster_server::Cluster;
use tonic::{Request, Response, Status};

use crate::error::ServerError;
use crate::node::Node;

pub struct ClusterService {
    pub node: Arc<Node>,
}

impl Node {
    /// Every member (voters and learners) as etcd `Member`s. Client URLs are bare `host:port`:
    /// etcdctl 3.4 (`endpoint status --cluster`) sends a client URL's text as the HTTP/2
    /// authority, and an `http://` prefix there is a protocol error for our HTTP/2 stack.
    pub fn members(&self) -> Vec<pb::Member> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| pb::Member {
                id: *id,
                name: format!("muster-{id}"),
                peer_ur_ls: vec![format!("http://{}", node.addr)],
                client_ur_ls: vec![node.addr.clone()],
                is_learner: !voters.contains(id),
            })
            .collect()
    }
}

fn unsupported(what: &'static str) -> Status {
    ServerError::Unsupported { what }.into()
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        Err(unsupported("member add"))
    }

    async fn member_remove(
        &self,
        _: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        Err(unsupported("member remove"))
    }

    async fn member_update(
        &self,
        _: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        Err(unsupported("member update"))
    }

    async fn member_list(
        &self,
        _: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let revision = self.node.sm.read().mvcc.current_revision();
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.node.header(revision)),
            members: self.node.members(),
        }))
    }

    async fn member_promote(
        &self,
        _: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        Err(unsupported("member promote"))
    }
}
