//! The checker's view of the compose cluster: node id ↔ container ↔ host-published client and
//! HTTP addresses, and musterd's `/health` as the source of "who leads" and "has it converged".

use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Deserialize;

use crate::docker::Container;
use crate::http;

/// One node as seen from the host.
#[derive(Debug, Clone)]
pub struct Node {
    /// Raft node id (service `muster{id}`).
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

impl Cluster {
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.endpoint.clone()).collect()
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
