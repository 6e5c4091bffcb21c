//! Regression (issue 13, item 3): Register is exactly-once on a real 3-node cluster. A Register
//! retried with the same `x-muster-request-id` gets the first answer (not RequestIdReused);
//! an ephemeral Register with `ttl_secs` is one log entry and one revision, grants one lease
//! (also when retried), and that lease expires without keep-alives; `registered_at_ms` is the
//! leader's entry time, the same on every node.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use etcd_client::{EventType, WatchOptions, WatchStream};
use muster_proto::registrypb as pb;
use muster_proto::registrypb::registry_client::RegistryClient;
use muster_server::grpc::lease_service::REQUEST_ID_HEADER;
use muster_tests::{etcd, wait_until, Cluster};
use tonic::transport::Channel;
use tracing::info;

const T: Duration = Duration::from_secs(15);
const SERVICE: &str = "orders";

async fn registry(cluster: &Cluster, id: u64) -> anyhow::Result<RegistryClient<Channel>> {
    Ok(RegistryClient::connect(format!("http://{}", cluster.addr(id))).await?)
}

fn key_of(instance_id: &str) -> String {
    format!("/muster/registry/public/DEFAULT_GROUP/{SERVICE}/{instance_id}")
}

fn request(address: &str, ephemeral: bool, ttl_secs: i64) -> pb::RegisterRequest {
    pb::RegisterRequest {
        instance: Some(pb::Instance {
            service: SERVICE.into(),
            address: address.into(),
            port: 8080,
            ephemeral,
            metadata: [("zone".to_string(), "a".to_string())].into(),
            ..Default::default()
        }),
        ttl_secs,
        lease_id: 0,
    }
}

async fn register(
    cluster: &Cluster,
    node: u64,
    req: &pb::RegisterRequest,
    request_id: &str,
) -> Result<pb::RegisterResponse, tonic::Status> {
    let mut r = tonic::Request::new(req.clone());
    let id = request_id
        .parse()
        .map_err(|_| tonic::Status::invalid_argument("test request id"))?;
    r.metadata_mut().insert(REQUEST_ID_HEADER, id);
    let mut c = registry(cluster, node)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    Ok(c.register(r).await?.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The instance as node `id` stores it (serializable: that node's own copy).
async fn stored_on(
    cluster: &Cluster,
    id: u64,
    instance_id: &str,
) -> anyhow::Result<Option<pb::Instance>> {
    let d = registry(cluster, id)
        .await?
        .discover(pb::DiscoverRequest {
            service: SERVICE.into(),
            serializable: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(d.instances
        .into_iter()
        .find(|i| i.instance_id == instance_id))
}

/// `registered_at_ms` of the instance on every node (after they converged): all equal.
async fn registered_at_everywhere(cluster: &Cluster, instance_id: &str) -> anyhow::Result<u64> {
    cluster.wait_converged(T).await?;
    let mut seen = Vec::new();
    for id in cluster.ids() {
        let i = stored_on(cluster, id, instance_id)
            .await?
            .with_context(|| format!("{instance_id} on node {id}"))?;
        seen.push(i.registered_at_ms);
    }
    anyhow::ensure!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "registered_at_ms differs between nodes: {seen:?}"
    );
    Ok(seen[0] as u64)
}

/// Waits until the wall clock has passed `ms`, so a retry stamped by a handler's clock would
/// carry a different time than the first attempt.
async fn clock_past(ms: u64) -> anyhow::Result<()> {
    wait_until(T, "the wall clock to advance", || async {
        (now_ms() > ms).then_some(())
    })
    .await
}

/// The leader's (linearizable) store revision.
async fn revision(cluster: &Cluster, leader: u64) -> anyhow::Result<i64> {
    let r = etcd(cluster, leader).await?.get("/", None).await?;
    r.header().map(|h| h.revision()).context("a header")
}

/// The next events of the watch (skipping empty replies).
async fn next_events(w: &mut WatchStream) -> anyhow::Result<Vec<(EventType, String, i64)>> {
    loop {
        let r = tokio::time::timeout(T, w.message())
            .await
            .context("no watch reply in time")??
            .context("watch ended")?;
        let evs: Vec<_> = r
            .events()
            .iter()
            .filter_map(|e| {
                let kv = e.kv()?;
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                Some((e.event_type(), key, kv.mod_revision()))
            })
            .collect();
        if !evs.is_empty() {
            return Ok(evs);
        }
    }
}

/// A started 3-node cluster, converged: (cluster, leader, a follower).
async fn cluster() -> anyhow::Result<(Cluster, u64, u64)> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let follower = cluster.follower_of(leader);
    cluster.wait_converged(T).await?;
    Ok((cluster, leader, follower))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t90_persistent_register_retry_gets_the_first_answer() -> anyhow::Result<()> {
    let (cluster, leader, follower) = cluster().await?;
    let req = request("10.0.0.1", false, 0);
    let before = revision(&cluster, leader).await?;
    let first = register(&cluster, follower, &req, "reg-persistent").await?;
    assert_eq!(first.revision, before + 1, "one revision");
    let at = registered_at_everywhere(&cluster, &first.instance_id).await?;

    info!("--- step: retried (on another node, a moment later) with the same request id");
    clock_past(at).await?;
    let retry = register(&cluster, leader, &req, "reg-persistent")
        .await
        .context("a retry with the same request id must get the first answer")?;
    assert_eq!(retry, first, "the same revision, lease and instance");
    assert_eq!(
        revision(&cluster, leader).await?,
        first.revision,
        "no write"
    );
    assert_eq!(
        registered_at_everywhere(&cluster, &first.instance_id).await?,
        at,
        "registered_at_ms of the first (and only) registration"
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t90_ephemeral_register_is_one_entry_one_revision_and_expires() -> anyhow::Result<()> {
    let (cluster, leader, follower) = cluster().await?;
    let before = revision(&cluster, leader).await?;
    let mut kv = etcd(&cluster, leader).await?;
    let mut watch = kv
        .watch(
            "/muster/registry/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(before + 1),
            ),
        )
        .await?;
    let ttl = 3;
    let req = request("10.0.0.2", true, ttl);
    let leader_node = cluster.node(leader)?;
    let entries_before = leader_node.applied_index();
    let wall_before = now_ms();
    let first = register(&cluster, follower, &req, "reg-ephemeral").await?;
    let wall_after = now_ms();
    assert_ne!(first.lease_id, 0, "an ephemeral instance gets a lease");
    assert_eq!(first.revision, before + 1, "one revision for grant + put");
    // The answer can come before Raft's metrics show the apply: wait for them, then count.
    let expected = entries_before.map(|i| i + 1);
    wait_until(
        T,
        "the leader's metrics to show the register applied",
        || async { (leader_node.applied_index() >= expected).then_some(()) },
    )
    .await?;
    assert_eq!(
        leader_node.applied_index(),
        expected,
        "one log entry for grant + put"
    );
    assert_eq!(
        cluster.lease_keeper(leader)?.tracked(),
        1,
        "the leader's keeper tracks the new lease at once"
    );
    let key = key_of(&first.instance_id);
    let got = kv.get(key.as_str(), None).await?;
    let stored = got.kvs().first().context("the instance's key")?;
    assert_eq!(
        (
            stored.create_revision(),
            stored.mod_revision(),
            stored.lease()
        ),
        (first.revision, first.revision, first.lease_id),
        "created at the response's revision, bound to the response's lease"
    );
    assert_eq!(
        next_events(&mut watch).await?,
        vec![(EventType::Put, key.clone(), first.revision)],
        "one PUT of the instance at that revision (a grant has no event)"
    );
    let granted = kv.lease_time_to_live(first.lease_id, None).await?;
    assert_eq!(granted.granted_ttl(), ttl, "the lease has the asked TTL");
    let at = registered_at_everywhere(&cluster, &first.instance_id).await?;
    assert!(
        (wall_before..=wall_after).contains(&at),
        "registered_at_ms {at} is the entry's time, within the call ({wall_before}..={wall_after})"
    );

    info!("--- step: without keep-alives the lease expires and takes the instance");
    for id in cluster.ids() {
        let c = etcd(&cluster, id).await?;
        let key = key.clone();
        wait_until(
            Duration::from_secs(ttl as u64 + 5),
            "the ephemeral instance to expire",
            || {
                let mut c = c.clone();
                let key = key.clone();
                async move {
                    let ser = etcd_client::GetOptions::new().with_serializable();
                    (c.get(key, Some(ser)).await.ok()?.count() == 0).then_some(())
                }
            },
        )
        .await
        .with_context(|| format!("node {id}"))?;
    }
    let evs = next_events(&mut watch).await?;
    assert_eq!(
        evs.iter()
            .map(|(t, k, _)| (*t, k.as_str()))
            .collect::<Vec<_>>(),
        vec![(EventType::Delete, key.as_str())],
        "the expiry deletes the instance"
    );
    assert!(kv.leases().await?.leases().is_empty(), "the lease is gone");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t90_ephemeral_register_retry_reuses_its_lease() -> anyhow::Result<()> {
    let (cluster, leader, follower) = cluster().await?;
    let req = request("10.0.0.3", true, 30);
    let first = register(&cluster, follower, &req, "reg-ephemeral").await?;
    let at = registered_at_everywhere(&cluster, &first.instance_id).await?;

    info!("--- step: retried on every node with the same request id");
    clock_past(at).await?;
    let mut retries = Vec::new();
    for id in cluster.ids() {
        retries.push((id, register(&cluster, id, &req, "reg-ephemeral").await));
    }
    // Leases first: a retry that fails must not have granted one either.
    let mut kv = etcd(&cluster, leader).await?;
    let ids: Vec<i64> = kv.leases().await?.leases().iter().map(|l| l.id()).collect();
    assert_eq!(
        ids,
        vec![first.lease_id],
        "one lease, none leaked by retries"
    );
    for (id, retry) in retries {
        let retry = retry.with_context(|| format!("a retry on node {id} gets the first answer"))?;
        assert_eq!(retry, first, "node {id}: same revision, lease and instance");
    }
    assert_eq!(
        revision(&cluster, leader).await?,
        first.revision,
        "no write"
    );
    assert_eq!(
        registered_at_everywhere(&cluster, &first.instance_id).await?,
        at,
        "registered_at_ms unchanged by the retries"
    );

    info!("--- step: the same request id for another registration is refused");
    let other = register(
        &cluster,
        leader,
        &request("10.0.0.4", true, 30),
        "reg-ephemeral",
    )
    .await
    .err()
    .context("a reused request id must fail")?;
    assert_eq!(other.code(), tonic::Code::InvalidArgument, "{other:?}");
    cluster.shutdown().await;
    Ok(())
}
