//! Membership and snapshots on a real cluster: a 4th node added (learner, then promoted) and a
//! node removed while writes continue; a wiped node rejoins under a new id and catches up by
//! snapshot after the leader purged its log.

use std::time::Duration;

use etcd_client::{GetOptions, MemberAddOptions};
use muster_tests::{etcd, wait_until, Cluster};
use tracing::info;

const T: Duration = Duration::from_secs(20);

async fn count(c: &mut etcd_client::Client, prefix: &str) -> anyhow::Result<i64> {
    Ok(c.get(
        prefix,
        Some(
            GetOptions::new()
                .with_prefix()
                .with_count_only()
                .with_serializable(),
        ),
    )
    .await?
    .count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn add_promote_and_remove_members_while_writing() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let mut admin = etcd(&cluster, 2).await?;

    info!("--- step: background writes");
    let mut writer = etcd(&cluster, 1).await?;
    let writes = tokio::spawn(async move {
        let mut acked = 0;
        for i in 0..300 {
            writer.put(format!("mem/{i:04}"), "v", None).await?;
            acked += 1;
        }
        anyhow::Ok(acked)
    });

    info!("--- step: add a learner, start it, promote it");
    let (addr, listener) = cluster.bind_joiner().await?;
    let added = admin
        .member_add(
            [format!("http://{addr}")],
            Some(MemberAddOptions::new().with_is_learner()),
        )
        .await?;
    let new_id = added.member().map(|m| m.id()).unwrap_or_default();
    assert!(added.member().is_some_and(|m| m.is_learner()));
    cluster.start_joiner(new_id, listener).await?;
    let mut newcomer = etcd(&cluster, new_id).await?;
    // A learner is caught up when it has every key the writer has written so far.
    wait_until(T, "the learner to receive data", || {
        let mut n = newcomer.clone();
        async move { (count(&mut n, "mem/").await.ok()? > 0).then_some(()) }
    })
    .await?;
    let promoted = admin.member_promote(new_id).await?;
    assert!(promoted
        .members()
        .iter()
        .any(|m| m.id() == new_id && !m.is_learner()));

    info!("--- step: remove node 3 (not the writer's node)");
    let removed = admin.member_remove(3).await?;
    assert!(!removed.members().iter().any(|m| m.id() == 3));
    assert_eq!(removed.members().len(), 3);

    info!("--- step: the removed node stops serving");
    let node3 = cluster.node(3)?.clone();
    wait_until(T, "node 3 to notice its removal", || {
        let n = node3.clone();
        async move { n.is_removed().then_some(()) }
    })
    .await?;
    let addr3 = cluster.addr(3);
    wait_until(T, "node 3 to stop accepting connections", || async move {
        tokio::net::TcpStream::connect(addr3)
            .await
            .is_err()
            .then_some(())
    })
    .await?;
    drop(node3);
    cluster.forget(3).await?;
    let acked = writes.await??;
    assert_eq!(acked, 300);
    cluster.wait_converged(T).await?;
    assert_eq!(
        count(&mut newcomer, "mem/").await?,
        300,
        "the new member has every write"
    );

    let mut c = etcd(&cluster, new_id).await?;
    c.put("mem/after-remove", "ok", None).await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wiped_node_rejoins_under_a_new_id_by_snapshot() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_with(3, |c| {
        c.raft.snapshot_every_entries = 50;
        c.raft.logs_kept_after_snapshot = 10;
    })
    .await?;
    let leader = cluster.wait_for_leader(T).await?;
    let victim = cluster.follower_of(leader);
    let mut c = etcd(&cluster, leader).await?;
    for i in 0..400 {
        c.put(format!("snap/{i:04}"), format!("v{i}"), None).await?;
    }
    let leader_node = cluster.node(leader)?.clone();
    wait_until(T, "the leader to snapshot and purge its log", || {
        let n = leader_node.clone();
        async move { (n.purged_index().unwrap_or(0) > 100).then_some(()) }
    })
    .await?;
    drop(leader_node);

    info!("--- step: wipe node {victim}; remove it; add a fresh member");
    cluster.wipe(victim).await?;
    c.member_remove(victim).await?;
    let (addr, listener) = cluster.bind_joiner().await?;
    let added = c.member_add([format!("http://{addr}")], None).await?;
    let new_id = added.member().map(|m| m.id()).unwrap_or_default();
    assert_ne!(
        new_id, victim,
        "a wiped node never comes back under its old id"
    );
    cluster.start_joiner(new_id, listener).await?;
    cluster.wait_converged(T).await?;

    let fresh = cluster.node(new_id)?.clone();
    assert!(
        fresh.snapshot_index().is_some(),
        "the new node was brought up by a snapshot"
    );
    let mut n = etcd(&cluster, new_id).await?;
    assert_eq!(count(&mut n, "snap/").await?, 400);
    let kv = n
        .get("snap/0123", Some(GetOptions::new().with_serializable()))
        .await?;
    assert_eq!(kv.kvs()[0].value(), b"v123");
    cluster.shutdown().await;
    Ok(())
}

/// The leader asked to remove itself answers before it stops (the answer is not lost to the
/// shutdown), the others elect a new leader, and a membership change sent to the new leader
/// at once succeeds: it waits for the inherited config to commit instead of refusing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_removes_itself_and_answers_then_a_new_leader_accepts_changes(
) -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let mut c = etcd(&cluster, leader).await?;
    c.put("self-remove/before", "v", None).await?;

    info!("--- step: remove the leader through the leader itself");
    let removed = c.member_remove(leader).await?;
    assert!(
        !removed.members().iter().any(|m| m.id() == leader),
        "the answer lists the members without the old leader"
    );
    assert_eq!(removed.members().len(), 2);
    let old = cluster.node(leader)?.clone();
    wait_until(T, "the old leader to notice its removal", || {
        let n = old.clone();
        async move { n.is_removed().then_some(()) }
    })
    .await?;
    drop(old);
    cluster.forget(leader).await?;

    info!("--- step: a new leader, and at once a member add through it");
    let new_leader = cluster.wait_for_leader(T).await?;
    assert_ne!(new_leader, leader);
    let mut c = etcd(&cluster, new_leader).await?;
    let (addr, listener) = cluster.bind_joiner().await?;
    let added = c
        .member_add(
            [format!("http://{addr}")],
            Some(MemberAddOptions::new().with_is_learner()),
        )
        .await?;
    let new_id = added.member().map(|m| m.id()).unwrap_or_default();
    cluster.start_joiner(new_id, listener).await?;
    c.put("self-remove/after", "v", None).await?;
    cluster.wait_converged(T).await?;
    let mut newcomer = etcd(&cluster, new_id).await?;
    assert_eq!(count(&mut newcomer, "self-remove/").await?, 2);
    cluster.shutdown().await;
    Ok(())
}
