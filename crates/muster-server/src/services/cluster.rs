//! The cluster service: the membership (voters, learners, their peer and client addresses)
//! and changes to it (etcd's MemberAdd, MemberPromote, MemberRemove), run on the leader
//! (`crate::membership`).

use std::collections::BTreeSet;
use std::sync::Arc;

use muster_store::raft::Member;
use muster_types::ValidationError;
use openraft::async_runtime::watch::WatchReceiver;

use crate::error::ServerError;
use crate::membership::{MembershipChange, MembershipChanged};
use crate::node::Node;

/// One member as the membership records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    pub member: Member,
    pub is_learner: bool,
}

/// Every member after a change, and the id the change was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub id: u64,
    pub members: Vec<MemberInfo>,
}

fn members_of<'a>(
    nodes: impl Iterator<Item = (u64, &'a Member)>,
    voters: &BTreeSet<u64>,
) -> Vec<MemberInfo> {
    nodes
        .map(|(id, m)| MemberInfo {
            id,
            member: m.clone(),
            is_learner: !voters.contains(&id),
        })
        .collect()
}

impl From<MembershipChanged> for Membership {
    fn from(c: MembershipChanged) -> Membership {
        Membership {
            id: c.id,
            members: members_of(c.nodes.iter().map(|(id, m)| (*id, m)), &c.voters),
        }
    }
}

/// Parses a peer URL (`http://host:port`, `https://host:port`, or bare `host:port`) into the
/// peer address; anything else (another scheme, a path, no numeric port) is etcd's "given
/// member URLs are invalid". Whether peers speak TLS is the cluster's configuration, not the
/// URL's.
pub fn peer_addr_of(url: &str) -> Result<String, ValidationError> {
    let addr = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let addr = addr.strip_suffix('/').unwrap_or(addr);
    let valid = match addr.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(['/', '?', '#', '@', ' '])
                && port.parse::<u16>().is_ok_and(|p| p != 0)
        }
        None => false,
    };
    if !valid {
        tracing::debug!(url, "member add refused: not http://host:port");
        return Err(ValidationError::BadMemberUrls);
    }
    Ok(addr.to_string())
}

/// Membership operations of one node.
#[derive(Clone)]
pub struct Cluster {
    node: Arc<Node>,
}

impl Cluster {
    pub fn new(node: Arc<Node>) -> Cluster {
        Cluster { node }
    }

    /// Every member as this node's membership shows it (voters and learners).
    pub fn members(&self) -> Vec<MemberInfo> {
        let metrics = self.node.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        members_of(membership.nodes().map(|(id, n)| (*id, n)), &voters)
    }

    /// Adds the node at `peer_url` (as a learner, or straight to voter); it gets a fresh id.
    pub async fn add(&self, peer_url: &str, learner: bool) -> Result<Membership, ServerError> {
        let addr = peer_addr_of(peer_url)?;
        let change = MembershipChange::Add { addr, learner };
        Ok(self.node.change_membership(change).await?.into())
    }

    pub async fn promote(&self, id: u64) -> Result<Membership, ServerError> {
        let change = MembershipChange::Promote { id };
        Ok(self.node.change_membership(change).await?.into())
    }

    pub async fn remove(&self, id: u64) -> Result<Membership, ServerError> {
        let change = MembershipChange::Remove { id };
        Ok(self.node.change_membership(change).await?.into())
    }
}
