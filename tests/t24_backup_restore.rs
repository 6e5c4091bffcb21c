//! Backup and restore (issue 14): `etcdctl snapshot save` against Muster writes a backup;
//! three data dirs restored from it start a new cluster that serves the same keys, revisions,
//! leases and registry, with the same HashKV at the backup's revision, and goes on from the
//! next revision.

use std::time::Duration;

use etcd_client::{GetOptions, LeaseTimeToLiveOptions, PutOptions};
use muster_proto::registrypb as pb;
use muster_proto::registrypb::registry_client::RegistryClient;
use muster_store::raft::state_machine::restore_backup;
use muster_tests::{etcd, etcdctl_ok, Cluster};
use tracing::info;

const T: Duration = Duration::from_secs(15);

/// Every key under `prefix` with everything a read returns about it.
async fn dump(c: &mut etcd_client::Client, prefix: &str) -> anyhow::Result<Vec<String>> {
    let r = c.get(prefix, Some(GetOptions::new().with_prefix())).await?;
    Ok(r.kvs()
        .iter()
        .map(|kv| {
            format!(
                "{}={} c{} m{} v{} l{}",
                kv.key_str().unwrap_or("?"),
                kv.value_str().unwrap_or("?"),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease()
            )
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_save_then_a_restored_cluster_serves_the_same_data() -> anyhow::Result<()> {
    let a = Cluster::start(3).await?;
    let leader = a.wait_for_leader(T).await?;
    let mut c = etcd(&a, leader).await?;
    info!("--- step: history, a compaction, a lease with a key, a registered instance");
    for round in 0..2 {
        for i in 0..100 {
            c.put(format!("b/{i:03}"), format!("v{round}-{i}"), None)
                .await?;
        }
    }
    c.delete("b/000", None).await?;
    let compact_at = c
        .get("b/001", None)
        .await?
        .header()
        .map_or(0, |h| h.revision());
    c.compact(compact_at, None).await?;
    let lease = c.lease_grant(600, None).await?.id();
    c.put("b/leased", "x", Some(PutOptions::new().with_lease(lease)))
        .await?;
    let mut reg = RegistryClient::connect(format!("http://{}", a.addr(leader))).await?;
    reg.register(pb::RegisterRequest {
        instance: Some(pb::Instance {
            service: "orders".into(),
            address: "10.0.0.1".into(),
            port: 8080,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await?;
    a.wait_converged(T).await?;
    let follower = a.follower_of(leader);
    let mut f = etcd(&a, follower).await?;
    let before = dump(&mut f, "b/").await?;
    let at = f
        .get("b/", None)
        .await?
        .header()
        .map_or(0, |h| h.revision());
    let hash_before = f.hash_kv(at).await?.hash();

    info!("--- step: etcdctl snapshot save through a follower");
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("backup.db");
    let file_arg = file.to_string_lossy().to_string();
    let out = etcdctl_ok(
        &[a.addr(follower).to_string()],
        &["snapshot", "save", &file_arg],
        None,
    )?;
    assert!(out.contains("Snapshot saved at"), "{out}");
    let bytes = std::fs::read(&file)?;
    a.shutdown().await;

    info!("--- step: a new 3-node cluster restored from the file");
    let b = Cluster::start_seeded(
        3,
        |id, data_dir| {
            let s = restore_backup(&bytes, data_dir)?;
            info!(id, revision = s.revision, records = s.records, "restored");
            Ok(())
        },
        |_| {},
    )
    .await?;
    let leader = b.wait_for_leader(T).await?;
    for id in b.ids() {
        let mut c = etcd(&b, id).await?;
        assert_eq!(dump(&mut c, "b/").await?, before, "node {id}");
        assert_eq!(c.hash_kv(at).await?.hash(), hash_before, "node {id}");
    }
    let mut c = etcd(&b, leader).await?;
    let ttl = c
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await?;
    assert_eq!(ttl.granted_ttl(), 600);
    assert_eq!(ttl.keys(), [b"b/leased".to_vec()]);
    // Compacted history stays compacted: the restored cluster refuses reads below it.
    let below = c
        .get(
            "b/001",
            Some(GetOptions::new().with_revision(compact_at - 1)),
        )
        .await;
    assert!(below.is_err(), "read below the compact revision: {below:?}");
    let mut reg = RegistryClient::connect(format!("http://{}", b.addr(leader))).await?;
    let found = reg
        .discover(pb::DiscoverRequest {
            service: "orders".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(found.instances.len(), 1, "{found:?}");
    let next = c.put("b/new", "1", None).await?;
    assert_eq!(next.header().map_or(0, |h| h.revision()), at + 1);
    b.shutdown().await;
    Ok(())
}
