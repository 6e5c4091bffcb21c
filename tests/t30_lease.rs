//! Leases on a real 3-node cluster through the etcd-client crate (and raw tonic where metadata
//! or one stream for many leases is needed): grant / keep-alive / time-to-live / revoke / list,
//! bounds and errors; revoke and expiry deleting every attached key in one revision on every
//! node; expiry within TTL + 1 s; a kept-alive lease surviving three leader kills; keep-alive
//! through a follower. Request-id retries are in `t32_lease_request_id`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod lease_util;

use anyhow::Context;
use etcd_client::{Client, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions};
use lease_util::*;
use muster_proto::etcdserverpb as pb;
use muster_tests::{etcd, wait_until, Cluster};
use tokio::time::Instant;
use tracing::info;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grant_keep_alive_time_to_live_revoke_list_and_errors() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let mut c = etcd(&cluster, leader).await?;

    info!("--- step: grant (server-chosen and client-chosen ids)");
    let g = c.lease_grant(10, None).await?;
    assert!(g.id() > 0);
    assert_eq!(g.ttl(), 10);
    let g42 = c
        .lease_grant(10, Some(LeaseGrantOptions::new().with_id(42)))
        .await?;
    assert_eq!((g42.id(), g42.ttl()), (42, 10));
    let s = expect_status(
        c.lease_grant(10, Some(LeaseGrantOptions::new().with_id(42)))
            .await,
    )?;
    assert_eq!(s.code(), tonic::Code::FailedPrecondition);
    assert_eq!(s.message(), "etcdserver: lease already exists");

    info!("--- step: TTL bounds");
    // Fast test timing: election_max 1 s → minimum TTL ⌈1.5 s⌉ = 2 s.
    assert_eq!(c.lease_grant(1, None).await?.ttl(), 2);
    assert_eq!(c.lease_grant(0, None).await?.ttl(), 2);
    assert_eq!(
        c.lease_grant(9_000_000_000, None).await?.ttl(),
        9_000_000_000
    );
    let s = expect_status(c.lease_grant(9_000_000_001, None).await)?;
    assert_eq!(s.code(), tonic::Code::OutOfRange);
    assert_eq!(s.message(), "etcdserver: too large lease TTL");

    info!("--- step: keep-alive, time-to-live with keys, list");
    let (mut keeper, mut stream) = c.lease_keep_alive(g.id()).await?;
    keeper.keep_alive().await?;
    let r = stream.message().await?.context("a keep-alive reply")?;
    assert_eq!((r.id(), r.ttl()), (g.id(), 10));
    c.put("l/a", "1", Some(PutOptions::new().with_lease(g.id())))
        .await?;
    c.put("l/b", "2", Some(PutOptions::new().with_lease(g.id())))
        .await?;
    let t = c
        .lease_time_to_live(g.id(), Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await?;
    assert_eq!((t.id(), t.granted_ttl()), (g.id(), 10));
    assert!((8..=10).contains(&t.ttl()), "remaining {}", t.ttl());
    assert_eq!(t.keys(), [b"l/a".to_vec(), b"l/b".to_vec()]);
    let t = c.lease_time_to_live(g42.id(), None).await?;
    assert!(t.keys().is_empty(), "keys only when asked for");
    let listed: Vec<i64> = c.leases().await?.leases().iter().map(|l| l.id()).collect();
    assert!(
        listed.contains(&g.id()) && listed.contains(&42),
        "{listed:?}"
    );

    info!("--- step: revoke; the lease is gone everywhere it is asked about");
    c.lease_revoke(g.id()).await?;
    assert_eq!(
        c.get("l/", Some(GetOptions::new().with_prefix()))
            .await?
            .count(),
        0
    );
    assert_eq!(c.lease_time_to_live(g.id(), None).await?.ttl(), -1);
    keeper.keep_alive().await?;
    let r = stream.message().await?.context("a keep-alive reply")?;
    assert_eq!(r.ttl(), 0, "keep-alive of an unknown lease replies TTL 0");
    assert!(!c.leases().await?.leases().iter().any(|l| l.id() == g.id()));
    let s = expect_status(c.lease_revoke(g.id()).await)?;
    assert_eq!(s.code(), tonic::Code::NotFound);
    assert_eq!(s.message(), "etcdserver: requested lease not found");
    assert_eq!(c.lease_time_to_live(777, None).await?.ttl(), -1);

    info!("--- step: put with an unknown lease");
    let s = expect_status(
        c.put("l/x", "v", Some(PutOptions::new().with_lease(123_456)))
            .await,
    )?;
    assert_eq!(s.code(), tonic::Code::NotFound);
    assert_eq!(s.message(), "etcdserver: requested lease not found");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoke_deletes_all_attached_keys_in_one_revision_on_every_node() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let mut c = etcd(&cluster, leader).await?;
    let id = c.lease_grant(30, None).await?.id();
    for k in ["rv/1", "rv/2", "rv/3", "rv/4", "rv/5"] {
        c.put(k, "v", Some(PutOptions::new().with_lease(id)))
            .await?;
    }
    let last_put = c.put("rv/keep", "k", None).await?;
    let last_put = last_put.header().map_or(0, |h| h.revision());

    info!("--- step: revoke through a follower");
    let mut f = etcd(&cluster, cluster.follower_of(leader)).await?;
    let r = f.lease_revoke(id).await?;
    let revoked_at = r.header().map_or(0, |h| h.revision());
    assert_eq!(
        revoked_at,
        last_put + 1,
        "one revision for all five deletes"
    );

    cluster.wait_converged(T).await?;
    for n in cluster.running() {
        let c = etcd(&cluster, n).await?;
        assert_eq!(count_on(&c, "rv/", last_put).await?.0, 6, "node {n} before");
        assert_eq!(
            count_on(&c, "rv/", revoked_at).await?,
            (1, revoked_at),
            "node {n}"
        );
    }
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_deletes_keys_within_ttl_plus_one_second_on_every_node() -> anyhow::Result<()> {
    // For a rough precision measurement, MUSTER_T30_EXPIRY_LEASES raises the lease count and
    // MUSTER_T30_EXPIRY_TTL the TTL (granting must finish within one TTL).
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let n = env("MUSTER_T30_EXPIRY_LEASES", 200);
    let ttl_secs = env("MUSTER_T30_EXPIRY_TTL", 3) as i64;
    let cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let c = etcd(&cluster, leader).await?;

    info!(
        n,
        "--- step: grant leases and attach keys (one multi-key lease)"
    );
    // At most 128 requests in flight on the one connection: h2 closes a connection on which
    // thousands of small request frames wait unread (ENHANCE_YOUR_CALM).
    let in_flight = Arc::new(tokio::sync::Semaphore::new(128));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let mut c = c.clone();
        let in_flight = in_flight.clone();
        tasks.spawn(async move {
            let _permit = in_flight.acquire().await?;
            let id = c.lease_grant(ttl_secs, None).await?.id();
            c.put(
                format!("exp/{i:05}"),
                "v",
                Some(PutOptions::new().with_lease(id)),
            )
            .await?;
            anyhow::Ok(id)
        });
    }
    let mut ids = Vec::with_capacity(n + 1);
    while let Some(r) = tasks.join_next().await {
        ids.push(r??);
    }
    let multi = c.clone().lease_grant(ttl_secs, None).await?.id();
    for k in ["exp/multi/a", "exp/multi/b", "exp/multi/c"] {
        c.clone()
            .put(k, "v", Some(PutOptions::new().with_lease(multi)))
            .await?;
    }
    ids.push(multi);
    let total = (n + 3) as i64;
    let (_, last_put) = count_on(&c, "exp/", 0).await?;

    info!("--- step: keep every lease alive on ONE stream (through a follower), then stop");
    let follower = cluster.follower_of(leader);
    let mut lc = raw(&cluster.addr(follower).to_string()).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(ids.len());
    let mut replies = lc
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut last_sent = Instant::now();
    for _round in 0..2 {
        last_sent = Instant::now();
        for id in &ids {
            tx.send(pb::LeaseKeepAliveRequest { id: *id }).await?;
        }
        for id in &ids {
            let r = replies.message().await?.context("a keep-alive reply")?;
            assert_eq!((r.id, r.ttl), (*id, ttl_secs), "replies in request order");
        }
    }
    let stopped = Instant::now();
    drop(tx);

    info!("--- step: wait for every key to vanish on every node");
    let clients: Vec<(u64, Client)> = {
        let mut v = Vec::new();
        for id in cluster.running() {
            v.push((id, etcd(&cluster, id).await?));
        }
        v
    };
    // Per node: (first time fewer keys were seen, first time none were).
    let seen: Mutex<Vec<(Option<Instant>, Option<Instant>)>> =
        Mutex::new(vec![(None, None); clients.len()]);
    let ttl = Duration::from_secs(ttl_secs as u64);
    wait_until(
        ttl + Duration::from_secs(5),
        "every key to expire everywhere",
        || async {
            let mut all_gone = true;
            for (i, (_, c)) in clients.iter().enumerate() {
                let (count, _) = count_on(c, "exp/", 0).await.ok()?;
                let now = Instant::now();
                let mut s = seen.lock().ok()?;
                if count < total && s[i].0.is_none() {
                    s[i].0 = Some(now);
                }
                if count == 0 && s[i].1.is_none() {
                    s[i].1 = Some(now);
                }
                all_gone &= count == 0;
            }
            all_gone.then_some(())
        },
    )
    .await?;
    let seen = seen.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))?;
    for ((node, _), (first_drop, gone)) in clients.iter().zip(&seen) {
        let (first_drop, gone) = (
            first_drop.context("a drop was seen")?,
            gone.context("all gone was seen")?,
        );
        let late = gone.saturating_duration_since(stopped + ttl);
        eprintln!(
            "node {node}: {total} keys of {} leases gone {} ms after TTL from the last keep-alive",
            ids.len(),
            late.as_millis()
        );
        assert!(
            gone <= stopped + ttl + Duration::from_secs(1),
            "node {node}: gone {late:?} after the deadline"
        );
        assert!(
            first_drop >= last_sent + ttl,
            "node {node}: a key expired early"
        );
    }
    let stats = cluster.lease_keeper(leader)?.expiry_stats();
    eprintln!("leader keeper lateness (applied − deadline): {stats:?}");
    assert_eq!(stats.expired as usize, ids.len());

    info!("--- step: same deletion revisions on every node; a lease's keys vanish together");
    cluster.wait_converged(T).await?;
    let mut histories = Vec::new();
    for (node, c) in &clients {
        let (_, current) = count_on(c, "exp/", 0).await?;
        let mut h = Vec::new();
        for rev in last_put..=current {
            let all = count_on(c, "exp/", rev).await?.0;
            let multi = count_on(c, "exp/multi/", rev).await?.0;
            assert!(
                multi == 0 || multi == 3,
                "node {node} rev {rev}: multi {multi}"
            );
            h.push((rev, all));
        }
        histories.push(h);
    }
    assert!(histories.windows(2).all(|w| w[0] == w[1]), "{histories:?}");
    eprintln!(
        "expiry revisions: {} for {} leases",
        histories[0].len() - 1,
        ids.len()
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kept_alive_lease_survives_three_leader_kills() -> anyhow::Result<()> {
    const TTL: i64 = 4;
    let mut cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let mut c = etcd(&cluster, leader).await?;
    let id = c.lease_grant(TTL, None).await?.id();
    c.put("ka/key", "v", Some(PutOptions::new().with_lease(id)))
        .await?;
    // A registry instance with live heartbeats rides the same lease.
    let mut reg = muster_proto::registrypb::registry_client::RegistryClient::connect(format!(
        "http://{}",
        cluster.addr(leader)
    ))
    .await?;
    let instance = muster_proto::registrypb::Instance {
        service: "ka".into(),
        address: "10.0.0.1".into(),
        port: 80,
        ephemeral: true,
        ..Default::default()
    };
    reg.register(muster_proto::registrypb::RegisterRequest {
        instance: Some(instance),
        lease_id: id,
        ..Default::default()
    })
    .await?;
    let instance_key = "/muster/registry/public/DEFAULT_GROUP/ka/10.0.0.1:80";

    // The client: a keep-alive every 500 ms through whichever node answers.
    let addrs: Vec<String> = cluster
        .ids()
        .iter()
        .map(|n| cluster.addr(*n).to_string())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let renewed = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicBool::new(false));
    let task = {
        let (stop, renewed, lost) = (stop.clone(), renewed.clone(), lost.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let mut next = 0;
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                for k in 0..addrs.len() {
                    let addr = &addrs[(next + k) % addrs.len()];
                    if let Ok(Ok(ttl)) =
                        tokio::time::timeout(Duration::from_secs(2), keep_alive_once(addr, id))
                            .await
                    {
                        if ttl <= 0 {
                            lost.store(true, Ordering::SeqCst);
                        }
                        renewed.fetch_add(1, Ordering::SeqCst);
                        next = (next + k) % addrs.len();
                        break;
                    }
                }
            }
        })
    };

    for round in 1..=3 {
        let leader = cluster.wait_for_leader(T).await?;
        info!(round, leader, "--- step: kill the leader");
        cluster.kill(leader).await?;
        let new_leader = cluster.wait_for_leader(T).await?;
        let before = renewed.load(Ordering::SeqCst);
        wait_until(T, "keep-alives to go on after the election", || async {
            (renewed.load(Ordering::SeqCst) >= before + 2).then_some(())
        })
        .await?;
        let mut c = etcd(&cluster, new_leader).await?;
        assert_eq!(c.get("ka/key", None).await?.count(), 1, "round {round}");
        assert_eq!(
            c.get(instance_key, None).await?.count(),
            1,
            "round {round}: the instance with live heartbeats survives"
        );
        let t = c.lease_time_to_live(id, None).await?;
        assert!(t.ttl() > 0, "round {round}: lease alive, ttl {}", t.ttl());
        info!(round, leader, "--- step: restart the killed node");
        cluster.restart(leader).await?;
        cluster.wait_converged(T).await?;
    }
    assert!(
        !lost.load(Ordering::SeqCst),
        "no keep-alive ever saw the lease gone"
    );

    info!("--- step: stop keep-alives; the lease now expires");
    stop.store(true, Ordering::SeqCst);
    task.await?;
    let leader = cluster.wait_for_leader(T).await?;
    let c = etcd(&cluster, leader).await?;
    wait_until(
        Duration::from_secs(TTL as u64 + 3),
        "the key to expire",
        || async { (count_on(&c, "ka/", 0).await.ok()?.0 == 0).then_some(()) },
    )
    .await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keep_alive_through_a_follower_keeps_the_lease() -> anyhow::Result<()> {
    const TTL: i64 = 2;
    let cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let mut f = etcd(&cluster, cluster.follower_of(leader)).await?;
    let id = f.lease_grant(TTL, None).await?.id();
    f.put("fw/key", "v", Some(PutOptions::new().with_lease(id)))
        .await?;
    let (mut keeper, mut stream) = f.lease_keep_alive(id).await?;

    info!("--- step: three TTLs of keep-alives through the follower");
    let until = Instant::now() + Duration::from_secs(3 * TTL as u64);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    while Instant::now() < until {
        tick.tick().await;
        keeper.keep_alive().await?;
        let r = stream.message().await?.context("a keep-alive reply")?;
        assert_eq!((r.id(), r.ttl()), (id, TTL));
    }
    let mut l = etcd(&cluster, leader).await?;
    assert_eq!(l.get("fw/key", None).await?.count(), 1);
    let t = f.lease_time_to_live(id, None).await?;
    assert!((1..=TTL).contains(&t.ttl()), "remaining {}", t.ttl());

    info!("--- step: the stream closes; the lease expires");
    drop(keeper);
    drop(stream);
    wait_until(
        Duration::from_secs(TTL as u64 + 2),
        "the key to expire",
        || async { (count_on(&f, "fw/", 0).await.ok()?.0 == 0).then_some(()) },
    )
    .await?;
    cluster.shutdown().await;
    Ok(())
}
