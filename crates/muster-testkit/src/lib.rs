//! Test clusters: N real Muster nodes in-process, each on loopback ports bound to 0 (client
//! and peer) with its own temp dir, talking real gRPC; the cluster's peer secret is a
//! generated file in the cluster's temp dir. Kill, restart and wait helpers; no fixed ports, no sleeps
//! used as synchronisation (every wait polls a condition against a deadline).
//!
//! Network faults go through each node's one fault point (`PeerChannels`, see
//! `muster_server::faults`), per direction: [`TestCluster::block`], [`TestCluster::black_hole`],
//! [`TestCluster::delay`], [`TestCluster::drop_messages`], [`TestCluster::isolate`];
//! [`TestCluster::heal`] clears them all. Drops are drawn from an RNG seeded per node from
//! `MUSTER_FAULT_SEED` (logged; a fixed seed by default), so a run can be replayed.
//!
//! Layout: [`TestCluster`] (this file); [`wait_until`] the one polling helper.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use muster_server::config::RaftTiming;
use muster_server::lease_keeper::LeaseKeeper;
use muster_server::node::{Node, StartError};
use muster_server::peer_auth::{write_private, PeerToken};
use muster_server::{Listeners, NodeConfig, RunningServer};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// Polls `cond` every 20 ms until it returns `Some`, or fails after `timeout` naming `what`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut cond: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Installs a tracing subscriber once (RUST_LOG controls it; default warnings only).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

struct TestNode {
    config: NodeConfig,
    /// The client address.
    addr: SocketAddr,
    /// The peer address (Raft).
    peer_addr: SocketAddr,
    server: Option<RunningServer>,
}

/// Binds a client and a peer listener on loopback port 0.
async fn bind_loopback() -> anyhow::Result<Listeners> {
    Ok(Listeners {
        client: TcpListener::bind("127.0.0.1:0").await?,
        peer: TcpListener::bind("127.0.0.1:0").await?,
    })
}

/// Listeners bound for a node that will join with MemberAdd (see [`TestCluster::bind_joiner`]).
pub struct JoinerListeners(Listeners);

impl JoinerListeners {
    /// Binds the given client and peer addresses (a node coming back on an old node's
    /// addresses); `None` while either is still taken.
    pub async fn bind_at(client: SocketAddr, peer: SocketAddr) -> Option<JoinerListeners> {
        Some(JoinerListeners(Listeners {
            client: TcpListener::bind(client).await.ok()?,
            peer: TcpListener::bind(peer).await.ok()?,
        }))
    }
}

/// The seed of the fault RNGs: `MUSTER_FAULT_SEED`, else a fixed one.
fn fault_seed() -> u64 {
    std::env::var("MUSTER_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed)
}

/// Seeds node `id`'s fault RNG from the cluster's seed.
fn seed_faults(server: &RunningServer, id: u64) {
    let seed = fault_seed();
    tracing::debug!(node_id = id, seed, "fault RNG seeded (MUSTER_FAULT_SEED)");
    server
        .node
        .peers()
        .seed_faults(seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
}

/// A cluster of real nodes in this process.
pub struct TestCluster {
    nodes: BTreeMap<u64, TestNode>,
    _dir: TempDir,
}

impl TestCluster {
    /// Starts `n` nodes (ids 1..=n) with fast Raft timing and waits for a leader.
    pub async fn start(n: u64) -> anyhow::Result<TestCluster> {
        Self::start_with(n, |_| {}).await
    }

    /// Like [`TestCluster::start`], letting the caller adjust each node's config.
    pub async fn start_with(
        n: u64,
        tweak: impl Fn(&mut NodeConfig),
    ) -> anyhow::Result<TestCluster> {
        Self::start_seeded(n, |_, _| Ok(()), tweak).await
    }

    /// Like [`TestCluster::start_with`], first calling `seed(id, data_dir)` for each node
    /// (e.g. to restore a backup into its empty data dir).
    pub async fn start_seeded(
        n: u64,
        seed: impl Fn(u64, &std::path::Path) -> anyhow::Result<()>,
        tweak: impl Fn(&mut NodeConfig),
    ) -> anyhow::Result<TestCluster> {
        init_tracing();
        let dir = tempfile::tempdir()?;
        let token_file = dir.path().join("peer-token");
        write_private(&token_file, &PeerToken::random_text())?;
        let mut listeners = BTreeMap::new();
        for id in 1..=n {
            listeners.insert(id, bind_loopback().await?);
        }
        let mut initial = BTreeMap::new();
        for (id, l) in &listeners {
            initial.insert(*id, l.peer.local_addr()?.to_string());
        }
        let mut nodes = BTreeMap::new();
        for (id, listeners) in listeners {
            let addr = listeners.client.local_addr()?;
            let peer_addr = listeners.peer.local_addr()?;
            let mut config = NodeConfig {
                node_id: id,
                data_dir: dir.path().join(format!("node{id}")),
                listen: addr,
                peer_listen: peer_addr,
                peer_token_file: Some(token_file.clone()),
                initial_cluster: initial.clone(),
                raft: RaftTiming::fast_for_tests(),
                ..Default::default()
            };
            tweak(&mut config);
            seed(id, &config.data_dir)?;
            let server = muster_server::start_with_listeners(config.clone(), listeners).await?;
            seed_faults(&server, id);
            nodes.insert(
                id,
                TestNode {
                    config,
                    addr,
                    peer_addr,
                    server: Some(server),
                },
            );
        }
        let cluster = TestCluster { nodes, _dir: dir };
        cluster.wait_for_leader(Duration::from_secs(10)).await?;
        cluster.wait_published(Duration::from_secs(10)).await?;
        Ok(cluster)
    }

    /// Waits until every running node's membership lists every running node's client
    /// address (each node publishes its own once it runs).
    pub async fn wait_published(&self, timeout: Duration) -> anyhow::Result<()> {
        wait_until(
            timeout,
            "every node's client address in the membership",
            || async {
                for n in self.nodes.values() {
                    let Some(s) = &n.server else { continue };
                    let members = s.services.cluster.members();
                    let all =
                        self.nodes
                            .iter()
                            .filter(|(_, m)| m.server.is_some())
                            .all(|(id, m)| {
                                members.iter().any(|x| {
                                    x.id == *id && x.member.client_addr == m.addr.to_string()
                                })
                            });
                    if !all {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await
    }

    /// The cluster's peer secret file.
    pub fn peer_token_file(&self) -> std::path::PathBuf {
        self._dir.path().join("peer-token")
    }

    /// Every node id, running or not.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// The client gRPC address of node `id`.
    pub fn addr(&self, id: u64) -> SocketAddr {
        self.nodes[&id].addr
    }

    /// The peer gRPC address of node `id` (Raft only).
    pub fn peer_addr(&self, id: u64) -> SocketAddr {
        self.nodes[&id].peer_addr
    }

    /// `http://addr` endpoints of the running nodes.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes
            .values()
            .filter(|n| n.server.is_some())
            .map(|n| format!("http://{}", n.addr))
            .collect()
    }

    /// The running node `id`.
    pub fn node(&self, id: u64) -> anyhow::Result<&Arc<Node>> {
        self.nodes
            .get(&id)
            .and_then(|n| n.server.as_ref())
            .map(|s| &s.node)
            .ok_or_else(|| anyhow!("node {id} is not running"))
    }

    /// The lease keeper of the running node `id` (expiry statistics, tracked leases).
    pub fn lease_keeper(&self, id: u64) -> anyhow::Result<&Arc<LeaseKeeper>> {
        self.nodes
            .get(&id)
            .and_then(|n| n.server.as_ref())
            .map(|s| &s.leases)
            .ok_or_else(|| anyhow!("node {id} is not running"))
    }

    /// The id the running nodes agree is leader, if they all agree and it is running.
    pub fn agreed_leader(&self) -> Option<u64> {
        let mut leader = None;
        for n in self.nodes.values() {
            let Some(s) = &n.server else { continue };
            let l = s.node.current_leader()?;
            match leader {
                None => leader = Some(l),
                Some(prev) if prev != l => return None,
                _ => {}
            }
        }
        let l = leader?;
        self.nodes
            .get(&l)
            .and_then(|n| n.server.as_ref())
            .map(|_| l)
    }

    /// Waits until every running node agrees on a running leader.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        wait_until(timeout, "an agreed leader", || async {
            self.agreed_leader()
        })
        .await
    }

    /// Waits until every running node has applied at least the leader's last log index.
    pub async fn wait_converged(&self, timeout: Duration) -> anyhow::Result<()> {
        let leader = self.wait_for_leader(timeout).await?;
        let target = self.node(leader)?.last_log_index();
        for id in self.running() {
            let node = self.node(id)?;
            if !node.wait_applied(target, timeout).await {
                bail!("node {id} did not apply up to {target:?} within {timeout:?}");
            }
        }
        Ok(())
    }

    /// Ids of running nodes.
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.server.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// A running node other than `leader` (the leader itself when it runs alone).
    pub fn follower_of(&self, leader: u64) -> u64 {
        self.running()
            .into_iter()
            .find(|id| *id != leader)
            .unwrap_or(leader)
    }

    /// Stops node `id` abruptly (its connections are cut, Raft stops); data stays on disk.
    pub async fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        self.take_server(id)?.stop().await;
        Ok(())
    }

    /// Stops node `id` as `musterd` does on SIGTERM: a leader hands off its leadership first.
    pub async fn stop_gracefully(&mut self, id: u64) -> anyhow::Result<()> {
        self.take_server(id)?.stop_gracefully().await;
        Ok(())
    }

    /// Node `id`'s running server, which the caller stops.
    fn take_server(&mut self, id: u64) -> anyhow::Result<RunningServer> {
        let n = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow!("no node {id}"))?;
        n.server
            .take()
            .ok_or_else(|| anyhow!("node {id} is not running"))
    }

    /// Changes `key`'s live value on node `id` alone, without a log entry (as a bit flip on
    /// one member's disk would), for corruption-check tests. Returns whether the key was live.
    pub fn corrupt_value(&self, id: u64, key: &[u8], value: &[u8]) -> anyhow::Result<bool> {
        Ok(self.node(id)?.sm().corrupt_value_for_testing(key, value)?)
    }

    /// Restarts node `id` from its data dir on its old address.
    pub async fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        let n = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow!("no node {id}"))?;
        if n.server.is_some() {
            bail!("node {id} is already running");
        }
        let (config, addr, peer_addr) = (n.config.clone(), n.addr, n.peer_addr);
        // The killed node's storage is released once its last in-flight handler drops its
        // handle; until then sled's file lock refuses a second open.
        let server = wait_until(
            Duration::from_secs(10),
            "the data dir to be released",
            || {
                let config = config.clone();
                async move {
                    let listeners = Listeners {
                        client: TcpListener::bind(addr).await.ok()?,
                        peer: TcpListener::bind(peer_addr).await.ok()?,
                    };
                    match muster_server::start_with_listeners(config, listeners).await {
                        Ok(s) => Some(Ok(s)),
                        Err(StartError::Sled(e)) => {
                            tracing::debug!("reopen of node {id} refused: {e}");
                            None
                        }
                        Err(e) => Some(Err(e)),
                    }
                }
            },
        )
        .await??;
        seed_faults(&server, id);
        n.server = Some(server);
        Ok(())
    }

    /// Binds listeners for a node that will join with MemberAdd; returns its peer address
    /// (the peer URL to add) and the listeners to hand to [`TestCluster::start_joiner`].
    pub async fn bind_joiner(&self) -> anyhow::Result<(SocketAddr, JoinerListeners)> {
        let l = bind_loopback().await?;
        Ok((l.peer.local_addr()?, JoinerListeners(l)))
    }

    /// Starts a node that joins the cluster under `id` (assigned by MemberAdd) on `listeners`.
    pub async fn start_joiner(
        &mut self,
        id: u64,
        JoinerListeners(listeners): JoinerListeners,
    ) -> anyhow::Result<()> {
        let template = self
            .nodes
            .values()
            .next()
            .map(|n| n.config.clone())
            .ok_or_else(|| anyhow!("empty cluster"))?;
        let addr = listeners.client.local_addr()?;
        let peer_addr = listeners.peer.local_addr()?;
        let data_dir = self._dir.path().join(format!("node{id}"));
        let config = NodeConfig {
            node_id: id,
            data_dir,
            listen: addr,
            peer_listen: peer_addr,
            initial_cluster: BTreeMap::new(),
            join: true,
            ..template
        };
        let server = muster_server::start_with_listeners(config.clone(), listeners).await?;
        self.nodes.insert(
            id,
            TestNode {
                config,
                addr,
                peer_addr,
                server: Some(server),
            },
        );
        Ok(())
    }

    /// Kills node `id` and deletes its data dir; the node is forgotten (a wiped node may only
    /// come back as a new member under a new id).
    pub async fn wipe(&mut self, id: u64) -> anyhow::Result<()> {
        if self.nodes.get(&id).is_some_and(|n| n.server.is_some()) {
            self.kill(id).await?;
        }
        let n = self
            .nodes
            .remove(&id)
            .ok_or_else(|| anyhow!("no node {id}"))?;
        let dir = n.config.data_dir.clone();
        // The killed node's storage handles may still be closing; retry until it is gone.
        wait_until(Duration::from_secs(10), "the data dir to be deleted", || {
            let dir = dir.clone();
            async move { (std::fs::remove_dir_all(&dir).is_ok() || !dir.exists()).then_some(()) }
        })
        .await
    }

    /// Forgets a node that stopped by itself (e.g. removed from the cluster).
    pub async fn forget(&mut self, id: u64) -> anyhow::Result<()> {
        let n = self
            .nodes
            .remove(&id)
            .ok_or_else(|| anyhow!("no node {id}"))?;
        if let Some(s) = n.server {
            s.stop().await;
        }
        Ok(())
    }

    /// Cuts node `id` off from every other node (both directions, peer traffic only; clients
    /// can still reach it, as with a partition between server racks).
    pub fn isolate(&self, id: u64) -> anyhow::Result<()> {
        let addr = self.peer_addr(id).to_string();
        for (other, n) in &self.nodes {
            if *other == id {
                continue;
            }
            if let Some(s) = &n.server {
                s.node.peers().block(&addr);
            }
            if let Some(s) = self.nodes.get(&id).and_then(|n| n.server.as_ref()) {
                s.node.peers().block(&n.peer_addr.to_string());
            }
        }
        Ok(())
    }

    /// The running node `from`'s fault point, and `to`'s peer address.
    fn link(&self, from: u64, to: u64) -> anyhow::Result<(&Arc<Node>, String)> {
        let to_addr = self
            .nodes
            .get(&to)
            .map(|n| n.peer_addr.to_string())
            .ok_or_else(|| anyhow!("no node {to}"))?;
        Ok((self.node(from)?, to_addr))
    }

    /// `from`'s calls to `to` fail at once, known not sent (one direction of a partition).
    pub fn block(&self, from: u64, to: u64) -> anyhow::Result<()> {
        let (node, addr) = self.link(from, to)?;
        node.peers().block(&addr);
        Ok(())
    }

    /// `from`'s calls to `to` are accepted and never answered: the caller sees nothing until
    /// its own deadline.
    pub fn black_hole(&self, from: u64, to: u64) -> anyhow::Result<()> {
        let (node, addr) = self.link(from, to)?;
        node.peers().black_hole(&addr);
        Ok(())
    }

    /// `from`'s messages to `to` are held `delay` before they leave.
    pub fn delay(&self, from: u64, to: u64, delay: Duration) -> anyhow::Result<()> {
        let (node, addr) = self.link(from, to)?;
        node.peers().delay(&addr, delay);
        Ok(())
    }

    /// `from`'s messages to `to` are lost with probability `p` (seeded, see the crate doc).
    pub fn drop_messages(&self, from: u64, to: u64, p: f64) -> anyhow::Result<()> {
        let (node, addr) = self.link(from, to)?;
        node.peers().drop_messages(&addr, p);
        Ok(())
    }

    /// Removes every injected network fault.
    pub fn heal(&self) {
        for n in self.nodes.values() {
            if let Some(s) = &n.server {
                s.node.peers().heal();
            }
        }
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        for n in self.nodes.values_mut() {
            if let Some(s) = n.server.take() {
                s.stop().await;
            }
        }
    }
}
