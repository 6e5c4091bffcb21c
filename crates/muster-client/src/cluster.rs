//! Cluster and Maintenance calls: members, per-endpoint status, and leader discovery (which
//! endpoint leads, from `Maintenance.Status.leader` mapped to an address by `MemberList`).

use std::time::Duration;

use futures::future::join_all;
use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::cluster_client::ClusterClient;
use muster_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use tokio::time::timeout;

use crate::client::Client;
use crate::endpoints::{authority, EndpointState};
use crate::error::ClientError;
use crate::retry::{CallSpec, Safety};

/// A cluster member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    /// Addresses clients reach the member at (`host:port`).
    pub client_urls: Vec<String>,
    pub peer_urls: Vec<String>,
    pub is_learner: bool,
}

/// One endpoint's view of the cluster (`Maintenance.Status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStatus {
    /// The endpoint asked.
    pub endpoint: String,
    pub member_id: u64,
    /// The leader's id as this node knows it (0 = none).
    pub leader: u64,
    pub raft_term: u64,
    pub raft_index: u64,
    pub raft_applied_index: u64,
    /// The node's store revision.
    pub revision: i64,
    pub db_size: i64,
    pub version: String,
    pub is_learner: bool,
    pub errors: Vec<String>,
}

impl From<pb::Member> for Member {
    fn from(m: pb::Member) -> Self {
        Member {
            id: m.id,
            name: m.name,
            client_urls: m.client_ur_ls,
            peer_urls: m.peer_ur_ls,
            is_learner: m.is_learner,
        }
    }
}

fn members(list: Vec<pb::Member>) -> Vec<Member> {
    list.into_iter().map(Member::from).collect()
}

/// How long one endpoint may take to answer a status probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl Client {
    /// The cluster's members.
    ///
    /// # Errors
    /// Any [`ClientError`] once the retry loop gives up.
    pub async fn member_list(&self) -> Result<Vec<Member>, ClientError> {
        self.call(CallSpec::read("member_list"), |a| async move {
            let r = ClusterClient::new(a.channel.clone())
                .member_list(a.request(pb::MemberListRequest {
                    linearizable: false,
                }))
                .await
                .map_err(|s| a.status(s))?;
            Ok(members(r.into_inner().members))
        })
        .await
    }

    /// Adds a member (`peer_url` = its gRPC `host:port`), as a learner or a voter; returns the
    /// new member (start it with `musterd --node-id <id> --join`). Never repeated after an
    /// unknown outcome: each attempt would pick a new id.
    ///
    /// # Errors
    /// Any [`ClientError`]; `FailedPrecondition` when the address is already a member.
    pub async fn member_add(&self, peer_url: &str, learner: bool) -> Result<Member, ClientError> {
        let url = peer_url.to_string();
        self.call(CallSpec::write("member_add", Safety::Unsafe), |a| {
            let url = url.clone();
            async move {
                let r = ClusterClient::new(a.channel.clone())
                    .member_add(a.request(pb::MemberAddRequest {
                        peer_ur_ls: vec![url],
                        is_learner: learner,
                    }))
                    .await
                    .map_err(|s| a.status(s))?
                    .into_inner();
                r.member.map(Member::from).ok_or_else(|| {
                    a.status(tonic::Status::internal(
                        "member_add reply without the member",
                    ))
                })
            }
        })
        .await
    }

    /// Promotes a learner to voter; returns the members after the change.
    ///
    /// # Errors
    /// Any [`ClientError`]; `FailedPrecondition` when `id` is not a learner.
    pub async fn member_promote(&self, id: u64) -> Result<Vec<Member>, ClientError> {
        self.call(
            CallSpec::write("member_promote", Safety::Overwrite),
            |a| async move {
                let r = ClusterClient::new(a.channel.clone())
                    .member_promote(a.request(pb::MemberPromoteRequest { id }))
                    .await
                    .map_err(|s| a.status(s))?;
                Ok(members(r.into_inner().members))
            },
        )
        .await
    }

    /// Removes a member; returns the members after the change. The removed node stops serving.
    ///
    /// # Errors
    /// Any [`ClientError`]; `FailedPrecondition` when `id` is not a member.
    pub async fn member_remove(&self, id: u64) -> Result<Vec<Member>, ClientError> {
        self.call(
            CallSpec::write("member_remove", Safety::Unsafe),
            |a| async move {
                let r = ClusterClient::new(a.channel.clone())
                    .member_remove(a.request(pb::MemberRemoveRequest { id }))
                    .await
                    .map_err(|s| a.status(s))?;
                Ok(members(r.into_inner().members))
            },
        )
        .await
    }

    /// Asks one endpoint directly (no retry, no routing) for its status.
    ///
    /// # Errors
    /// [`ClientError::InvalidEndpoint`], or the endpoint's failure.
    pub async fn endpoint_status(&self, endpoint: &str) -> Result<EndpointStatus, ClientError> {
        let ep = self.endpoints().get_or_add(&authority(endpoint)?)?;
        self.probe(&ep).await
    }

    /// The status of every known endpoint, asked concurrently; failures are per endpoint.
    pub async fn status_all(&self) -> Vec<(String, Result<EndpointStatus, ClientError>)> {
        let eps = self.endpoints().all();
        let results = join_all(eps.iter().map(|e| self.probe(e))).await;
        eps.iter()
            .map(|e| e.authority.clone())
            .zip(results)
            .collect()
    }

    async fn probe(&self, ep: &EndpointState) -> Result<EndpointStatus, ClientError> {
        let per = self.options().attempt_timeout.min(PROBE_TIMEOUT);
        let mut mc = MaintenanceClient::new(ep.channel.clone());
        let call = mc.status(pb::StatusRequest {});
        let r = match timeout(per, call).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(ClientError::from_status(&ep.authority, &s)),
            Err(_) => Err(ClientError::AttemptTimeout {
                endpoint: ep.authority.clone(),
                after: per,
            }),
        };
        self.endpoints().report(ep, Some(&r.as_ref().map(|_| ())));
        let s = r?;
        let header = s.header.unwrap_or_default();
        Ok(EndpointStatus {
            endpoint: ep.authority.clone(),
            member_id: header.member_id,
            leader: s.leader,
            raft_term: s.raft_term,
            raft_index: s.raft_index,
            raft_applied_index: s.raft_applied_index,
            revision: header.revision,
            db_size: s.db_size,
            version: s.version,
            is_learner: s.is_learner,
            errors: s.errors,
        })
    }

    /// Finds the leader: asks every endpoint for its status, trusts the highest term that
    /// names a leader, and maps the leader's id to its client address with that endpoint's
    /// member list. Records and returns the address.
    ///
    /// # Errors
    /// [`ClientError::NoLeader`] when no endpoint names a leader; member-list failures.
    pub async fn refresh_leader(&self) -> Result<Option<String>, ClientError> {
        let statuses = self.status_all().await;
        let best = statuses
            .into_iter()
            .filter_map(|(_, r)| r.ok())
            .filter(|s| s.leader != 0)
            .max_by_key(|s| s.raft_term)
            .ok_or(ClientError::NoLeader)?;
        let ep = self.endpoints().get_or_add(&best.endpoint)?;
        let mut cc = ClusterClient::new(ep.channel.clone());
        let call = cc.member_list(pb::MemberListRequest {
            linearizable: false,
        });
        let members = match timeout(PROBE_TIMEOUT, call).await {
            Ok(Ok(r)) => r.into_inner().members,
            Ok(Err(s)) => return Err(ClientError::from_status(&ep.authority, &s)),
            Err(_) => {
                return Err(ClientError::AttemptTimeout {
                    endpoint: ep.authority.clone(),
                    after: PROBE_TIMEOUT,
                })
            }
        };
        let addr = members
            .into_iter()
            .find(|m| m.id == best.leader)
            .and_then(|m| m.client_ur_ls.into_iter().next())
            .and_then(|u| authority(&u).ok());
        if let Some(a) = &addr {
            self.endpoints().set_leader(Some(a));
        }
        Ok(addr)
    }
}
