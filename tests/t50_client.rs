//! `muster-client` against real 3-node clusters: writes through leader kills apply exactly
//! once where the server de-duplicates (lease grants) and land with the right values
//! otherwise; a watch survives the kill of its node with no gap and no duplicate;
//! `register_self` comes back after its lease is revoked behind its back; a discovery cache
//! converges to the registry after a burst of changes and stays readable with the cluster down.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use futures::StreamExt;
use muster_client::{
    Client, ClientOptions, DiscoverQuery, GetOptions, InstanceSpec, ServiceName, WatchOptions,
    WatchUpdate,
};
use muster_tests::{wait_until, Cluster};
use tracing::info;

const T: Duration = Duration::from_secs(30);

fn options() -> ClientOptions {
    ClientOptions {
        call_timeout: Duration::from_secs(30),
        attempt_timeout: Duration::from_secs(3),
        watch_probe_interval: Duration::from_secs(1),
        ..ClientOptions::default()
    }
}

async fn client(cluster: &Cluster) -> anyhow::Result<Client> {
    Ok(Client::connect(cluster.endpoints(), options()).await?)
}

/// The id of the node at `authority`.
fn node_at(cluster: &Cluster, authority: &str) -> anyhow::Result<u64> {
    cluster
        .ids()
        .into_iter()
        .find(|id| cluster.addr(*id).to_string() == authority)
        .with_context(|| format!("no node at {authority}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn continuous_writes_through_two_leader_kills_apply_once() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let client = client(&cluster).await?;
    const PUTS: usize = 300;
    const GRANTS: usize = 120;
    const WRITERS: usize = 4;
    let done = Arc::new(AtomicUsize::new(0));

    info!("--- step: {WRITERS} put writers and {WRITERS} lease-grant writers start");
    let mut puts = Vec::new();
    for w in 0..WRITERS {
        let (c, done) = (client.clone(), done.clone());
        puts.push(tokio::spawn(async move {
            for i in (w..PUTS).step_by(WRITERS) {
                c.put(format!("cw/{i:04}"), format!("v{i}")).await?;
                done.fetch_add(1, Ordering::SeqCst);
            }
            anyhow::Ok(())
        }));
    }
    let mut grants = Vec::new();
    for w in 0..WRITERS {
        let (c, done) = (client.clone(), done.clone());
        grants.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in (w..GRANTS).step_by(WRITERS) {
                ids.push(c.lease_grant(600).await?.id);
                done.fetch_add(1, Ordering::SeqCst);
            }
            anyhow::Ok(ids)
        }));
    }

    let total = PUTS + GRANTS;
    for (round, at) in [(1, total / 3), (2, 2 * total / 3)] {
        wait_until(T, "writes to progress", || async {
            (done.load(Ordering::SeqCst) >= at).then_some(())
        })
        .await?;
        let leader = cluster.wait_for_leader(T).await?;
        info!(
            round,
            leader,
            acked = done.load(Ordering::SeqCst),
            "--- step: kill the leader"
        );
        cluster.kill(leader).await?;
        cluster.wait_for_leader(T).await?;
        info!(round, "--- step: restart the killed node");
        cluster.restart(leader).await?;
        cluster.wait_converged(T).await?;
    }

    for p in puts {
        p.await??;
    }
    let mut granted = Vec::new();
    for g in grants {
        granted.extend(g.await??);
    }
    let stats = client.stats();
    info!(
        retries = stats.retries(),
        unknown_outcome_retries = stats.unknown_outcome_retries(),
        "--- step: every write acknowledged; check the store"
    );

    let r = client.range("cw/", GetOptions::new().with_prefix()).await?;
    ensure!(
        r.count as usize == PUTS,
        "{} keys, expected {PUTS}",
        r.count
    );
    let mut twice = 0;
    for (i, kv) in r.kvs.iter().enumerate() {
        ensure!(kv.key == format!("cw/{i:04}").into_bytes(), "key {i}");
        ensure!(kv.value == format!("v{i}").into_bytes(), "value of key {i}");
        if kv.version > 1 {
            twice += 1;
        }
    }
    // Puts repeated after an unknown outcome carry the same request id, which the applier
    // de-duplicates: every key was applied exactly once (version 1).
    ensure!(
        twice == 0,
        "{twice} keys applied twice despite request ids ({} unknown-outcome retries)",
        stats.unknown_outcome_retries()
    );
    info!(
        retries = stats.unknown_outcome_retries(),
        "no key applied twice"
    );

    // Lease grants are de-duplicated by request id: exactly one lease per acknowledged grant.
    let distinct: BTreeSet<i64> = granted.iter().copied().collect();
    ensure!(
        distinct.len() == GRANTS,
        "grant ids not distinct: {}",
        distinct.len()
    );
    let leases: BTreeSet<i64> = client.lease_leases().await?.into_iter().collect();
    ensure!(
        leases == distinct,
        "the store holds {} leases for {GRANTS} grants (extra: {:?})",
        leases.len(),
        leases.difference(&distinct).collect::<Vec<_>>()
    );
    ensure!(
        stats.unknown_outcome_retries() > 0,
        "the kills should have left some write with an unknown outcome"
    );
    cluster.shutdown().await;
    Ok(())
}

/// Every (revision, key, value) of puts under `prefix` from `from` through `to`, read from
/// node `id` with a plain etcd client: the authoritative history.
async fn history(
    cluster: &Cluster,
    id: u64,
    prefix: &str,
    from: i64,
    to: i64,
) -> anyhow::Result<Vec<(i64, Vec<u8>, Vec<u8>)>> {
    let mut c = muster_tests::etcd(cluster, id).await?;
    let opts = etcd_client::WatchOptions::new()
        .with_prefix()
        .with_start_revision(from);
    let mut stream = c.watch(prefix, Some(opts)).await?;
    let mut out = Vec::new();
    while out.last().is_none_or(|(r, _, _)| *r < to) {
        let resp = tokio::time::timeout(T, stream.message())
            .await
            .context("history stalled")??
            .context("history stream ended")?;
        for e in resp.events() {
            if let Some(kv) = e.kv() {
                out.push((kv.mod_revision(), kv.key().to_vec(), kv.value().to_vec()));
            }
        }
    }
    out.retain(|(r, _, _)| *r <= to);
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_survives_the_kill_of_its_node_without_gap_or_duplicate() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let watcher = client(&cluster).await?;
    let writer = client(&cluster).await?;
    let start = writer.put("wk/start", "0").await?.revision;
    let mut w = watcher.watch(
        "wk/",
        WatchOptions::new()
            .with_prefix()
            .with_start_revision(start + 1),
    );

    info!("--- step: a writer keeps writing");
    const WRITES: usize = 400;
    let acked = Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let mut write_task = {
        let (c, acked) = (writer.clone(), acked.clone());
        tokio::spawn(async move {
            for i in 0..WRITES {
                let r = c.put(format!("wk/{}", i % 10), format!("v{i}")).await?;
                acked.lock().map(|mut a| a.push(r.revision)).ok();
            }
            anyhow::Ok(())
        })
    };

    let mut seen: Vec<(i64, Vec<u8>, Vec<u8>)> = Vec::new();
    let mut resumed = 0;
    let mut killed = None;
    // Set once the writer is done: the last acknowledged revision.
    let mut final_rev: Option<i64> = None;
    loop {
        if killed.is_none() && seen.len() >= 100 {
            let ep = w.endpoint().context("the watch has an endpoint")?;
            let id = node_at(&cluster, &ep)?;
            info!(
                id,
                seen = seen.len(),
                "--- step: kill node {id}, which serves the watch"
            );
            cluster.kill(id).await?;
            killed = Some(id);
        }
        if final_rev.is_some_and(|f| seen.last().is_some_and(|(r, _, _)| *r >= f)) {
            break;
        }
        let update = tokio::select! {
            done = &mut write_task, if final_rev.is_none() => {
                done??;
                final_rev = acked.lock().ok().and_then(|a| a.iter().max().copied());
                continue;
            }
            u = tokio::time::timeout(T, w.next()) => u,
        };
        match update.context("watch stalled")?.context("watch ended")?? {
            WatchUpdate::Events { events, .. } => seen.extend(
                events
                    .into_iter()
                    .map(|e| (e.revision(), e.kv.key, e.kv.value)),
            ),
            WatchUpdate::Resumed {
                endpoint,
                from_revision,
            } => {
                info!(endpoint, from_revision, "watch resumed");
                resumed += 1;
            }
            WatchUpdate::Compacted { .. } => bail!("unexpected compaction"),
        }
    }
    let killed = killed.context("the node was killed")?;
    ensure!(resumed >= 1, "the watch reported its resumption");
    let final_rev = final_rev.context("final revision")?;
    let survivor = cluster.running()[0];
    info!(
        killed,
        survivor, final_rev, "--- step: compare with the history on a survivor"
    );
    let truth = history(&cluster, survivor, "wk/", start + 1, final_rev).await?;
    seen.retain(|(r, _, _)| *r <= final_rev);
    ensure!(
        seen.windows(2).all(|p| p[0].0 < p[1].0),
        "revisions strictly increase (no duplicate)"
    );
    ensure!(
        seen.len() == truth.len(),
        "{} events seen, {} in history",
        seen.len(),
        truth.len()
    );
    ensure!(seen == truth, "the watch saw exactly the history");
    let revs: BTreeSet<i64> = seen.iter().map(|(r, _, _)| *r).collect();
    let acked = acked.lock().map(|a| a.clone()).unwrap_or_default();
    ensure!(
        acked.iter().all(|r| revs.contains(r)),
        "every acknowledged write was seen"
    );
    cluster.shutdown().await;
    Ok(())
}

fn instance(service: &str, host: &str, port: u32) -> InstanceSpec {
    InstanceSpec {
        service: service.into(),
        address: host.into(),
        port,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn register_self_comes_back_after_its_lease_is_revoked() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let service_client = client(&cluster).await?;
    let admin = client(&cluster).await?;
    let reg = service_client
        .register_self(instance("orders", "10.0.0.1", 8080), Duration::from_secs(3))
        .await?;
    let first = reg.lease_id();
    let (_, found) = admin.discover(DiscoverQuery::service("orders")).await?;
    ensure!(
        found.len() == 1 && found[0].lease_id == first,
        "registered: {found:?}"
    );

    info!(lease = first, "--- step: revoke the lease behind its back");
    admin.lease_revoke(first).await?;
    let second = wait_until(T, "a new registration", || async {
        let s = reg.state();
        (s.registrations == 2 && s.lease_id != first).then_some(s.lease_id)
    })
    .await?;
    wait_until(T, "the instance listed under the new lease", || async {
        let (_, found) = admin
            .discover(DiscoverQuery::service("orders"))
            .await
            .ok()?;
        (found.len() == 1 && found[0].lease_id == second).then_some(())
    })
    .await?;

    info!("--- step: it stays registered across several TTLs");
    let renewals_before = reg.state().renewals;
    wait_until(T, "renewals", || async {
        (reg.state().renewals >= renewals_before + 4).then_some(())
    })
    .await?;
    ensure!(
        reg.state().registrations == 2,
        "no needless re-registration"
    );

    info!("--- step: shutdown deregisters and revokes");
    reg.shutdown().await?;
    let (_, found) = admin.discover(DiscoverQuery::service("orders")).await?;
    ensure!(found.is_empty(), "deregistered: {found:?}");
    ensure!(
        admin.lease_time_to_live(second, false).await?.ttl == -1,
        "lease revoked"
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_discovery_cache_converges_after_a_burst_and_survives_the_cluster() -> anyhow::Result<()>
{
    let mut cluster = Cluster::start(3).await?;
    let c = client(&cluster).await?;
    let service = ServiceName::new("", "", "burst")?;
    let cache = c.discovery_cache(service);
    cache.wait_synced(T).await?;

    info!("--- step: a burst of registrations, updates, deregistrations and a lease revoke");
    let persistent = futures::future::join_all((0..30).map(|i| {
        let c = c.clone();
        async move {
            c.register(instance("burst", "10.1.0.1", 1000 + i), None)
                .await
        }
    }))
    .await;
    let keys: Vec<_> = persistent
        .into_iter()
        .map(|r| r.map(|r| r.key))
        .collect::<Result<_, _>>()?;
    let lease = c.lease_grant(60).await?.id;
    for i in 0..5 {
        c.register_with_lease(
            InstanceSpec {
                ephemeral: true,
                ..instance("burst", "10.2.0.1", 2000 + i)
            },
            lease,
        )
        .await?;
    }
    let updates = futures::future::join_all(keys.iter().take(10).map(|k| {
        let c = c.clone();
        let req = muster_client::proto::registrypb::UpdateRequest {
            key: Some(muster_client::proto::registrypb::InstanceKey {
                namespace: k.namespace.clone(),
                group: k.group.clone(),
                service: k.service.clone(),
                instance_id: k.instance_id.clone(),
            }),
            weight: Some(7),
            healthy: Some(false),
            ..Default::default()
        };
        async move { c.update_instance(req).await }
    }))
    .await;
    for u in updates {
        u?;
    }
    for k in keys.iter().skip(20) {
        ensure!(c.deregister(k).await?, "deregistered {k:?}");
    }
    c.lease_revoke(lease).await?;

    let (revision, truth) = c.discover(DiscoverQuery::service("burst")).await?;
    let truth: BTreeMap<String, (u32, bool)> = truth
        .into_iter()
        .map(|i| (i.id().to_string(), (i.instance.weight, i.instance.healthy)))
        .collect();
    ensure!(
        truth.len() == 20,
        "20 instances remain, got {}",
        truth.len()
    );
    wait_until(T, "the cache to match the registry", || async {
        let view: BTreeMap<String, (u32, bool)> = cache
            .instances()
            .into_iter()
            .map(|i| (i.id().to_string(), (i.instance.weight, i.instance.healthy)))
            .collect();
        (cache.revision() >= revision && view == truth).then_some(())
    })
    .await?;
    ensure!(
        cache.available().len() == 10,
        "10 healthy instances are available"
    );

    info!("--- step: the whole cluster goes down; the cache still answers");
    for id in cluster.ids() {
        cluster.kill(id).await?;
    }
    ensure!(
        cache.instances().len() == 20,
        "readable while the cluster is unreachable"
    );
    ensure!(cache.available().len() == 10);
    Ok(())
}
