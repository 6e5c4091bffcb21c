//! Failover on a real 3-node cluster: the leader is killed, a new one is elected, writes
//! continue, every acknowledged write survives, and the killed node restarts from its data
//! dir and catches up.

use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use muster_tests::{etcd, wait_until, Cluster};
use tracing::info;

const T: Duration = Duration::from_secs(15);

/// Puts keys through `client` until `n` are acknowledged; returns the acknowledged keys.
async fn put_n(
    client: &mut etcd_client::Client,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let mut acked = Vec::new();
    for i in 0..n {
        let key = format!("{prefix}/{i:04}");
        client.put(key.clone(), format!("v{i}"), None).await?;
        acked.push(key);
    }
    Ok(acked)
}

/// The keys under `prefix`, in order (a linearizable read through `client`).
async fn keys_under(client: &mut etcd_client::Client, prefix: &str) -> anyhow::Result<Vec<String>> {
    let r = client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await?;
    Ok(r.kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_loses_no_acknowledged_write() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let survivor = cluster.follower_of(leader);
    info!("--- step: writes before the kill, through follower {survivor}");
    let mut client = etcd(&cluster, survivor).await?;
    let mut acked = put_n(&mut client, "fo/before", 50).await?;

    info!("--- step: kill leader {leader}");
    let killed_at = Instant::now();
    cluster.kill(leader).await?;
    let new_leader = cluster.wait_for_leader(T).await?;
    assert_ne!(new_leader, leader);
    info!(
        elapsed_ms = killed_at.elapsed().as_millis() as u64,
        new_leader, "--- step: new leader elected"
    );

    info!("--- step: writes after the kill");
    acked.extend(put_n(&mut client, "fo/after", 50).await?);

    acked.sort();
    assert_eq!(
        keys_under(&mut client, "fo/").await?,
        acked,
        "every acknowledged write is present, nothing else"
    );

    info!("--- step: restart the old leader; it catches up from its data dir");
    cluster.restart(leader).await?;
    cluster.wait_converged(T).await?;
    let old = etcd(&cluster, leader).await?;
    let r = wait_until(T, "the restarted node to serve all keys", || {
        // etcd-client clients are cheap clones sharing one channel.
        let mut old = old.clone();
        async move {
            let r = old
                .get(
                    "fo/",
                    Some(GetOptions::new().with_prefix().with_serializable()),
                )
                .await
                .ok()?;
            (r.count() as usize == 100).then_some(r)
        }
    })
    .await?;
    assert_eq!(r.count(), 100);
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_cluster_restart_recovers_state() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let mut client = etcd(&cluster, 1).await?;
    let acked = put_n(&mut client, "rs", 20).await?;
    let rev = client
        .get("rs/", Some(GetOptions::new().with_prefix()))
        .await?
        .header()
        .map(|h| h.revision());
    drop(client);
    for id in cluster.ids() {
        cluster.kill(id).await?;
    }
    for id in cluster.ids() {
        cluster.restart(id).await?;
    }
    cluster.wait_for_leader(T).await?;
    let mut client = etcd(&cluster, 3).await?;
    let r = client
        .get("rs/", Some(GetOptions::new().with_prefix()))
        .await?;
    assert_eq!(r.count() as usize, acked.len());
    assert!(
        r.header().map(|h| h.revision()) >= rev,
        "revision never goes back"
    );
    cluster.shutdown().await;
    Ok(())
}

/// A follower forwards writes over one long-lived stream to the leader. Cut off from the
/// cluster, it must refuse writes without sending them (a refused put is never applied later),
/// and once healed its next writes must go through a fresh stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarding_follower_refuses_while_cut_off_and_recovers() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let follower = cluster.follower_of(leader);
    let mut through_follower = etcd(&cluster, follower).await?;
    let mut acked = put_n(&mut through_follower, "cut/before", 5).await?;

    info!(
        follower,
        "--- step: isolate the follower; its writes must fail"
    );
    cluster.isolate(follower)?;
    let refused = through_follower.put("cut/refused", "x", None).await;
    assert!(
        refused.is_err(),
        "a put through an isolated follower was acknowledged: {refused:?}"
    );

    info!("--- step: heal; writes through the follower resume");
    cluster.heal();
    wait_until(T, "a put through the healed follower", || {
        let mut c = through_follower.clone();
        async move { c.put("cut/after-heal", "x", None).await.ok() }
    })
    .await?;
    acked.push("cut/after-heal".to_string());
    acked.extend(put_n(&mut through_follower, "cut/after", 5).await?);

    let mut on_leader = etcd(&cluster, leader).await?;
    acked.sort();
    assert_eq!(
        keys_under(&mut on_leader, "cut/").await?,
        acked,
        "every acknowledged write is on the leader, and the refused one is not"
    );
    cluster.shutdown().await;
    Ok(())
}
