//! etcd `Cluster` service over gRPC: MemberList, MemberAdd (as learner or voter),
//! MemberPromote and MemberRemove — decode, call `crate::services::cluster`, encode.

use std::sync::Arc;

use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::cluster_server::Cluster;
use muster_types::ValidationError;
use tonic::{Request, Response, Status};

use crate::error::ServerError;
use crate::node::Node;
use crate::services::cluster::{self as svc, MemberInfo};

pub struct ClusterService {
    pub node: Arc<Node>,
    pub cluster: svc::Cluster,
}

/// etcd `Member`s: peer URLs are the peer port's, client URLs the client port's, empty until
/// the member has published it (as etcd lists a member that has not started). Client URLs are
/// bare `host:port`, where etcd says `http://host:port`: etcdctl 3.4 (`endpoint status
/// --cluster`, `endpoint hashkv --cluster`) dials each as `passthrough:///<url>` and so sends
/// the URL's whole text as the HTTP/2 `:authority`; grpc-go's server tolerates that, but the h2
/// crate under tonic refuses the stream (PROTOCOL_ERROR). Checked again in issue 14 with a
/// scheme: all three `--cluster` calls failed. clientv3 3.4 dials a bare `host:port` fine.
/// Peer URLs say `https://` when the peer port speaks TLS.
pub fn to_pb(members: Vec<MemberInfo>, peer_tls: bool) -> Vec<pb::Member> {
    let scheme = if peer_tls { "https" } else { "http" };
    members
        .into_iter()
        .map(|m| pb::Member {
            id: m.id,
            name: format!("muster-{}", m.id),
            peer_ur_ls: vec![format!("{scheme}://{}", m.member.addr)],
            client_ur_ls: if m.member.client_addr.is_empty() {
                vec![]
            } else {
                vec![m.member.client_addr]
            },
            is_learner: m.is_learner,
        })
        .collect()
}

fn unsupported(what: &'static str) -> Status {
    ServerError::Unsupported { what }.into()
}

impl ClusterService {
    fn members(&self, members: Vec<MemberInfo>) -> Vec<pb::Member> {
        to_pb(members, self.node.config.tls.peer_tls())
    }

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
        // A member has one peer address in Muster (etcd allows several).
        let [url] = req.peer_ur_ls.as_slice() else {
            return Err(ServerError::Validation(ValidationError::BadMemberUrls).into());
        };
        let changed = self.cluster.add(url, req.is_learner).await?;
        let id = changed.id;
        let members = self.members(changed.members);
        let member = members.iter().find(|m| m.id == id).cloned();
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
        let changed = self.cluster.remove(req.into_inner().id).await?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: Some(self.header()),
            members: self.members(changed.members),
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
            members: self.members(self.cluster.members()),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let changed = self.cluster.promote(req.into_inner().id).await?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: Some(self.header()),
            members: self.members(changed.members),
        }))
    }
}
