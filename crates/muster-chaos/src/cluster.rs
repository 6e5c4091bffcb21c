//! The checker's view of the compose cluster: node id ↔ container ↔ host-published client and
//! HTTP addresses, and musterd's `/health` as the source of "who leads" and "has it converged".
//! The view starts as the compose nodes 1..=n and follows the nemesis's membership changes, so
//! it always holds the members of the moment. Membership changes themselves go through the etcd
//! Cluster API (MemberAdd, MemberPromote, MemberRemove), retried only while an outcome is open.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Deserialize;
use tracing::{info, warn};

use crate::docker::{Container, CLIENT_PORT, HTTP_PORT};
use crate::http;
use crate::workload::client;

/// One node as seen from the host.
#[derive(Debug, Clone)]
pub struct Node {
    /// Raft node id (compose service `muster{id}`; a member added later has a random id).
    pub id: u64,
    /// Client endpoint published on the host (`127.0.0.1:23791`).
    pub endpoint: String,
    /// HTTP address published on the host (`127.0.0.1:23811`).
    pub http: String,
    pub container: Container,
}

/// musterd's `/health` JSON.
#[derive(Debug, Clone, Deserialize)]
pub struct Health {
    pub node_id: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub revision: i64,
    pub applied_index: u64,
}

#[derive(Debug, Clone)]
pub struct Cluster {
    pub nodes: Vec<Node>,
}

const HTTP_TIMEOUT: Duration = Duration::from_millis(1500);

impl Node {
    /// Node `id` in `container`, reached at the host addresses its ports are `published` on
    /// (as [`crate::docker::Docker::inspect`] reports them).
    ///
    /// # Errors
    /// The client or HTTP port is not published.
    pub fn new(
        id: u64,
        container: Container,
        published: &BTreeMap<String, String>,
    ) -> anyhow::Result<Node> {
        let host = |port: &str| {
            published
                .get(port)
                .map(|a| a.replace("0.0.0.0:", "127.0.0.1:"))
                .with_context(|| format!("{} does not publish {port}", container.name))
        };
        Ok(Node {
            id,
            endpoint: host(CLIENT_PORT)?,
            http: host(HTTP_PORT)?,
            container,
        })
    }
}

impl Cluster {
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.endpoint.clone()).collect()
    }

    /// Every node's client endpoint but `except`'s (a node being removed may cut the connection
    /// of a request about itself before it answers).
    pub fn endpoints_except(&self, except: u64) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.id != except)
            .map(|n| n.endpoint.clone())
            .collect()
    }

    /// Asks every node for its member list and /health: each must list exactly the nodes of
    /// this view, all voters, and answer /health under its own id. Returns what disagrees.
    pub async fn check_members(&self, op_timeout: Duration) -> Vec<String> {
        let expected: BTreeSet<(u64, bool)> = self.nodes.iter().map(|n| (n.id, false)).collect();
        let mut problems = Vec::new();
        for n in &self.nodes {
            match member_list(&n.endpoint, op_timeout).await {
                Ok(seen) if seen == expected => {}
                Ok(seen) => problems.push(format!(
                    "node {} lists members {seen:?} (id, learner); expected {expected:?}",
                    n.id
                )),
                Err(e) => problems.push(format!("node {}: member list failed: {e:#}", n.id)),
            }
        }
        for (id, h) in self.health_all().await {
            match h {
                Some(h) if h.node_id == id => {}
                Some(h) => problems.push(format!("node {id} answers /health as {}", h.node_id)),
                None => problems.push(format!("node {id}: no healthy /health answer")),
            }
        }
        problems
    }

    pub fn node(&self, id: u64) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// `/health` of every node (None where it did not answer 200 with a body).
    pub async fn health_all(&self) -> Vec<(u64, Option<Health>)> {
        let addrs: Vec<(u64, String)> = self.nodes.iter().map(|n| (n.id, n.http.clone())).collect();
        tokio::task::spawn_blocking(move || {
            std::thread::scope(|s| {
                let hs: Vec<_> = addrs
                    .iter()
                    .map(|(id, a)| {
                        s.spawn(move || {
                            let h = http::get(a, "/health", HTTP_TIMEOUT)
                                .ok()
                                .filter(|r| r.status == 200)
                                .and_then(|r| serde_json::from_str::<Health>(&r.body).ok());
                            (*id, h)
                        })
                    })
                    .collect();
                hs.into_iter()
                    .zip(addrs.iter())
                    .map(|(h, (id, _))| h.join().unwrap_or((*id, None)))
                    .collect()
            })
        })
        .await
        .unwrap_or_default()
    }

    /// The leader, if a majority of nodes name the same one and it names itself.
    pub async fn leader(&self) -> Option<u64> {
        let hs = self.health_all().await;
        let majority = self.nodes.len() / 2 + 1;
        let named: Vec<u64> = hs.iter().filter_map(|(_, h)| h.as_ref()?.leader).collect();
        let candidate = named
            .iter()
            .copied()
            .find(|l| named.iter().filter(|x| *x == l).count() >= majority)?;
        let self_view = hs.iter().find(|(id, _)| *id == candidate)?.1.as_ref()?;
        (self_view.leader == Some(candidate)).then_some(candidate)
    }

    /// Waits until every node is healthy, all name the same leader, and (with `exact`) every
    /// node has applied exactly the leader's index (use when writes have stopped); without it,
    /// every node must reach the leader's applied index as first seen (caught up while writes
    /// continue). Returns the leader.
    ///
    /// # Errors
    /// Not converged by `timeout`; the message carries the last /health of each node.
    pub async fn wait_converged(&self, timeout: Duration, exact: bool) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        let mut target: Option<u64> = None;
        loop {
            let hs = self.health_all().await;
            if let Some(leader) = agreed_leader(&hs) {
                let leader_applied = hs
                    .iter()
                    .find(|(id, _)| *id == leader)
                    .and_then(|(_, h)| h.as_ref())
                    .map_or(0, |h| h.applied_index);
                let t = *target.get_or_insert(leader_applied);
                let ok = hs.iter().all(|(_, h)| {
                    h.as_ref().is_some_and(|h| {
                        if exact {
                            h.applied_index == leader_applied
                        } else {
                            h.applied_index >= t
                        }
                    })
                });
                if ok && leader_applied > 0 {
                    return Ok(leader);
                }
            } else {
                target = None;
            }
            if Instant::now() > deadline {
                let detail: Vec<String> = hs
                    .iter()
                    .map(|(id, h)| match h {
                        Some(h) => format!(
                            "node {id}: leader {:?} term {} applied {} rev {}",
                            h.leader, h.term, h.applied_index, h.revision
                        ),
                        None => format!("node {id}: no healthy answer"),
                    })
                    .collect();
                bail!(
                    "cluster not converged after {:?}: {}",
                    timeout,
                    detail.join("; ")
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The leader every node names, if all answered and agree.
fn agreed_leader(hs: &[(u64, Option<Health>)]) -> Option<u64> {
    let mut leader = None;
    for (_, h) in hs {
        let l = h.as_ref()?.leader?;
        if leader.is_some_and(|x| x != l) {
            return None;
        }
        leader = Some(l);
    }
    leader
}

/// A membership change through the etcd Cluster API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    /// MemberAdd of the node at `peer_url` (`http://host:port`), as a learner or a voter.
    Add { peer_url: String, learner: bool },
    /// MemberPromote of a learner.
    Promote(u64),
    /// MemberRemove.
    Remove(u64),
}

/// Whether an error leaves the outcome open: the change may or may not have been applied.
/// Unavailable (no leader yet, leader unreachable, commit unknown), a deadline, and a lost
/// connection (tonic reports a connection cut mid-call as Unknown "transport error").
fn outcome_open(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// Ids and learner flags of the members node `endpoint` lists (from its own Raft state).
///
/// # Errors
/// The node did not answer.
pub async fn member_list(
    endpoint: &str,
    op_timeout: Duration,
) -> anyhow::Result<BTreeSet<(u64, bool)>> {
    let mut c = client(&[endpoint.to_string()], op_timeout).await?;
    let list = c.member_list().await?;
    Ok(list
        .members()
        .iter()
        .map(|m| (m.id(), m.is_learner()))
        .collect())
}

/// Applies `change` through `endpoints` (balanced) and returns the member id it concerns (for
/// an add, the id the cluster assigned). A change is retried only after an open outcome, and
/// then only once the member list shows the earlier attempt did not take effect (a blind retry
/// of an add would add the node twice, under two ids); after an open outcome, a refusal such
/// as "member not found" is also settled by the member list.
///
/// # Errors
/// The change was refused, or its outcome is still open at `timeout`.
pub async fn change_members(
    endpoints: &[String],
    change: &MemberChange,
    op_timeout: Duration,
    timeout: Duration,
) -> anyhow::Result<u64> {
    let mut c = client(endpoints, op_timeout).await?;
    let deadline = Instant::now() + timeout;
    let mut open = false;
    loop {
        match apply_change(&mut c, change).await {
            Ok(Some(id)) => return Ok(id),
            Ok(None) => bail!("{change:?}: the answer names no member"),
            Err(e) if outcome_open(&e) => {
                open = true;
                warn!(error = %e, ?change, "membership change: outcome open");
            }
            Err(e) if open => {
                warn!(error = %e, ?change, "membership change refused after an open attempt");
            }
            Err(e) => return Err(anyhow::Error::from(e).context(format!("{change:?}"))),
        }
        if let Some(id) = took_effect(&mut c, change).await {
            info!(
                ?change,
                member = id,
                "membership change: an earlier attempt took effect"
            );
            return Ok(id);
        }
        if Instant::now() > deadline {
            bail!("{change:?}: outcome still open after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One attempt; the member id it concerns (None: an add answered without the new member).
async fn apply_change(
    c: &mut etcd_client::Client,
    change: &MemberChange,
) -> Result<Option<u64>, etcd_client::Error> {
    match change {
        MemberChange::Add { peer_url, learner } => {
            let opts = learner.then(|| etcd_client::MemberAddOptions::new().with_is_learner());
            let r = c.member_add([peer_url.as_str()], opts).await?;
            Ok(r.member().map(|m| m.id()))
        }
        MemberChange::Promote(id) => c.member_promote(*id).await.map(|_| Some(*id)),
        MemberChange::Remove(id) => c.member_remove(*id).await.map(|_| Some(*id)),
    }
}

/// Whether the member list (as the node that answers sees it) shows `change` done.
async fn took_effect(c: &mut etcd_client::Client, change: &MemberChange) -> Option<u64> {
    let list = c.member_list().await.ok()?;
    let members = list.members();
    match change {
        MemberChange::Add { peer_url, .. } => members
            .iter()
            .find(|m| m.peer_urls().contains(peer_url))
            .map(|m| m.id()),
        MemberChange::Promote(id) => members
            .iter()
            .any(|m| m.id() == *id && !m.is_learner())
            .then_some(*id),
        MemberChange::Remove(id) => (!members.iter().any(|m| m.id() == *id)).then_some(*id),
    }
}
