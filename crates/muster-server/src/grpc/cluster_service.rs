//! etcd `Cluster` service: MemberList from the Raft membership; MemberAdd (as learner or
//! voter), MemberPromote and MemberRemove through `crate::membership`.

use std::sync::Arc;

use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::cluster_server::Cluster;
use muster_store::raft::Member;
use muster_types::ValidationError;
use openraft::async_runtime::watch::WatchReceiver;
use tonic::{Request, Response, Status};

use crate::error::ServerError;
use crate::membership::MembershipChange;
use crate::node::Node;

pub struct ClusterService {
    pub node: Arc<Node>,
}

impl Node {
    /// Every member (voters and learners) as etcd `Member`s: peer URLs are the peer port's,
    /// client URLs the client port's, empty until the member has published it (as etcd lists
    /// a member that has not started). Client URLs are bare `host:port`: etcdctl 3.4
    /// (`endpoint status --cluster`) sends a client URL's text as the HTTP/2 authority, and an
    /// `http://` prefix there is a protocol error for our HTTP/2 stack.
    pub fn members(&self) -> Vec<pb::Member> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        to_members(membership.nodes().map(|(id, n)| (*id, n)), &voters)
    }
}

fn to_members<'a>(
    nodes: impl Iterator<Item = (u64, &'a Member)>,
    voters: &std::collections::BTreeSet<u64>,
) -> Vec<pb::Member> {
    nodes
        .map(|(id, m)| pb::Member {
            id,
            name: format!("muster-{id}"),
            peer_ur_ls: vec![format!("http://{}", m.addr)],
            client_ur_ls: if m.client_addr.is_empty() {
                vec![]
            } else {
                vec![m.client_addr.clone()]
            },
            is_learner: !voters.contains(&id),
        })
        .collect()
}

/// The membership as the leader reported it after a change (a follower that forwarded the
/// change may not have received the new membership yet).
fn changed_members(c: &crate::membership::MembershipChanged) -> Vec<pb::Member> {
    to_members(c.nodes.iter().map(|(id, m)| (*id, m)), &c.voters)
}

fn unsupported(what: &'static str) -> Status {
    ServerError::Unsupported { what }.into()
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Status {
    ServerError::Validation(ValidationError::InvalidArgument {
        field,
        reason: reason.into(),
    })
    .into()
}

impl ClusterService {
    fn header(&self) -> pb::ResponseHeader {
        self.node
            .header(self.node.sm.read().mvcc.current_revision())
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let req = req.into_inner();
        let url = match req.peer_ur_ls.as_slice() {
            [one] => one,
            _ => {
                return Err(invalid(
                    "peerURLs",
                    "exactly one peer URL (the node's peer address)",
                ))
            }
        };
        let addr = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        if !addr.contains(':') {
            return Err(invalid("peerURLs", format!("{url} is not host:port")));
        }
        let changed = self
            .node
            .change_membership(MembershipChange::Add {
                addr,
                learner: req.is_learner,
            })
            .await
            .map_err(ServerError::from)?;
        let members = changed_members(&changed);
        let member = members.iter().find(|m| m.id == changed.id).cloned();
        Ok(Response::new(pb::MemberAddResponse {
            header: Some(self.header()),
            member,
            members,
        }))
    }

    async fn member_remove(
        &self,
        req: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let id = req.into_inner().id;
        let changed = self
            .node
            .change_membership(MembershipChange::Remove { id })
            .await
            .map_err(ServerError::from)?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: Some(self.header()),
            members: changed_members(&changed),
        }))
    }

    async fn member_update(
        &self,
        _: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        // A member's address is part of its identity in Muster: remove it and add it anew.
        Err(unsupported("member update"))
    }

    async fn member_list(
        &self,
        _: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.header()),
            members: self.node.members(),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let id = req.into_inner().id;
        let changed = self
            .node
            .change_membership(MembershipChange::Promote { id })
            .await
            .map_err(ServerError::from)?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: Some(self.header()),
            members: changed_members(&changed),
        }))
    }
}
