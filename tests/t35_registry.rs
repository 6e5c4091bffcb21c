//! The service registry (`muster.v1.Registry`) on a real 3-node cluster: register, discover on
//! every node, update, list, deregister, validation, and ephemeral expiry.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use muster_proto::registrypb as pb;
use muster_proto::registrypb::registry_client::RegistryClient;
use muster_tests::{etcd, wait_until, Cluster};
use tonic::transport::Channel;

async fn registry(cluster: &Cluster, id: u64) -> anyhow::Result<RegistryClient<Channel>> {
    Ok(RegistryClient::connect(format!("http://{}", cluster.addr(id))).await?)
}

fn instance(service: &str, addr: &str, port: u32) -> pb::Instance {
    pb::Instance {
        service: service.into(),
        address: addr.into(),
        port,
        ..Default::default()
    }
}

async fn next(
    s: &mut tonic::Streaming<pb::SubscribeResponse>,
) -> anyhow::Result<pb::SubscribeResponse> {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .map_err(|_| anyhow::anyhow!("no subscription message within 10 s"))??
        .ok_or_else(|| anyhow::anyhow!("subscription ended"))
}

fn discover(service: &str) -> pb::DiscoverRequest {
    pb::DiscoverRequest {
        service: service.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn register_discover_update_list_deregister() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let follower = cluster.follower_of(leader);
    let mut reg = registry(&cluster, follower).await?;

    let mut a = instance("orders", "10.0.0.1", 8080);
    a.metadata = HashMap::from([("zone".to_string(), "a".to_string())]);
    a.cluster = "east".into();
    let ra = reg
        .register(pb::RegisterRequest {
            instance: Some(a),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(ra.instance_id, "10.0.0.1:8080");
    assert_eq!(ra.lease_id, 0, "persistent instances have no lease");
    let mut b = instance("orders", "10.0.0.2", 8080);
    b.ephemeral = true;
    b.weight = Some(5);
    let rb = reg
        .register(pb::RegisterRequest {
            instance: Some(b),
            ttl_secs: 60,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_ne!(
        rb.lease_id, 0,
        "an ephemeral instance is bound to a new lease"
    );
    reg.register(pb::RegisterRequest {
        instance: Some(instance("users", "10.0.1.1", 9000)),
        ..Default::default()
    })
    .await?;

    // Linearizable discovery on every node sees the writes at once.
    for id in cluster.ids() {
        let mut r = registry(&cluster, id).await?;
        let d = r.discover(discover("orders")).await?.into_inner();
        let ids: Vec<&str> = d.instances.iter().map(|i| i.instance_id.as_str()).collect();
        assert_eq!(ids, vec!["10.0.0.1:8080", "10.0.0.2:8080"], "node {id}");
        assert!(d.revision >= rb.revision);
        let eph = &d.instances[1];
        assert_eq!(
            (eph.lease_id, eph.weight, eph.ephemeral),
            (rb.lease_id, Some(5), true)
        );
    }

    // A serializable Discover is served locally and may lag; it converges.
    for id in cluster.ids() {
        let r = registry(&cluster, id).await?;
        wait_until(
            Duration::from_secs(10),
            "serializable discover to converge",
            || {
                let mut r = r.clone();
                async move {
                    let d = r
                        .discover(pb::DiscoverRequest {
                            serializable: true,
                            ..discover("orders")
                        })
                        .await
                        .ok()?
                        .into_inner();
                    (d.instances.len() == 2).then_some(())
                }
            },
        )
        .await?;
    }

    // The stored value is JSON at the documented key, readable through the etcd API.
    let mut kv = etcd(&cluster, leader).await?;
    let got = kv
        .get(
            "/muster/registry/public/DEFAULT_GROUP/orders/10.0.0.1:8080",
            None,
        )
        .await?;
    let json: serde_json::Value = serde_json::from_slice(got.kvs()[0].value())?;
    assert_eq!(json["address"], "10.0.0.1");
    assert_eq!(json["metadata"]["zone"], "a");

    // Filters.
    let d = reg
        .discover(pb::DiscoverRequest {
            metadata_selector: HashMap::from([("zone".to_string(), "a".to_string())]),
            ..discover("orders")
        })
        .await?
        .into_inner();
    assert_eq!(d.instances.len(), 1);
    let d = reg
        .discover(pb::DiscoverRequest {
            clusters: vec!["east".into()],
            ..discover("orders")
        })
        .await?
        .into_inner();
    assert_eq!(d.instances.len(), 1);

    // Update: disable b (keeps its lease); healthy_only then skips it.
    let key = pb::InstanceKey {
        service: "orders".into(),
        instance_id: "10.0.0.2:8080".into(),
        ..Default::default()
    };
    let u = reg
        .update(pb::UpdateRequest {
            key: Some(key.clone()),
            enabled: Some(false),
            metadata: HashMap::from([("v".to_string(), "2".to_string())]),
            ..Default::default()
        })
        .await?
        .into_inner();
    let ui = u.instance.expect("updated instance");
    assert_eq!((ui.enabled, ui.lease_id), (Some(false), rb.lease_id));
    let d = reg
        .discover(pb::DiscoverRequest {
            healthy_only: true,
            ..discover("orders")
        })
        .await?
        .into_inner();
    assert_eq!(d.instances.len(), 1);

    let l = reg
        .list_services(pb::ListServicesRequest::default())
        .await?
        .into_inner();
    let summary: Vec<(String, u32, u32)> = l
        .services
        .into_iter()
        .map(|s| (s.service, s.instances, s.healthy_instances))
        .collect();
    assert_eq!(
        summary,
        vec![("orders".to_string(), 2, 1), ("users".to_string(), 1, 1)]
    );

    let del = reg
        .deregister(pb::DeregisterRequest {
            key: Some(key.clone()),
        })
        .await?
        .into_inner();
    assert!(del.deleted);
    let del = reg
        .deregister(pb::DeregisterRequest { key: Some(key) })
        .await?
        .into_inner();
    assert!(!del.deleted, "deregistering twice removes nothing");
    assert_eq!(
        reg.discover(discover("orders"))
            .await?
            .into_inner()
            .instances
            .len(),
        1
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_instances_are_rejected_naming_the_field() -> anyhow::Result<()> {
    let cluster = Cluster::start(1).await?;
    let mut reg = registry(&cluster, 1).await?;
    let cases = [
        ("service", instance("bad/name", "10.0.0.1", 80)),
        ("address", instance("s", "not a host!", 80)),
        ("port", instance("s", "10.0.0.1", 0)),
        ("port", instance("s", "10.0.0.1", 70_000)),
        (
            "weight",
            pb::Instance {
                weight: Some(10_001),
                ..instance("s", "10.0.0.1", 80)
            },
        ),
    ];
    for (field, inst) in cases {
        let err = reg
            .register(pb::RegisterRequest {
                instance: Some(inst),
                ..Default::default()
            })
            .await
            .expect_err(field);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    let eph = pb::Instance {
        ephemeral: true,
        ..instance("s", "10.0.0.1", 80)
    };
    let err = reg
        .register(pb::RegisterRequest {
            instance: Some(eph),
            ..Default::default()
        })
        .await
        .expect_err("ttl");
    assert!(err.message().contains("ttl_secs"), "{}", err.message());
    assert!(
        reg.discover(discover("s"))
            .await?
            .into_inner()
            .instances
            .is_empty(),
        "nothing was stored"
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ephemeral_instance_vanishes_after_ttl_on_every_node_at_one_revision() -> anyhow::Result<()>
{
    let cluster = Cluster::start(3).await?;
    let mut reg = registry(&cluster, 2).await?;
    let eph = pb::Instance {
        ephemeral: true,
        ..instance("pay", "10.0.0.9", 443)
    };
    let ttl = 2;
    let r = reg
        .register(pb::RegisterRequest {
            instance: Some(eph),
            ttl_secs: ttl,
            ..Default::default()
        })
        .await?;
    let registered = Instant::now();
    let lease = r.into_inner().lease_id;
    // No keep-alives: the leader's keeper expires the lease; every node deletes the key at the
    // same revision.
    let key = "/muster/registry/public/DEFAULT_GROUP/pay/10.0.0.9:443";
    for id in cluster.ids() {
        let c = etcd(&cluster, id).await?;
        wait_until(
            Duration::from_secs(ttl as u64 + 5),
            "the instance to expire",
            || {
                let mut c = c.clone();
                async move { (c.get(key, None).await.ok()?.count() == 0).then_some(()) }
            },
        )
        .await?;
    }
    let gone_after = registered.elapsed();
    assert!(
        gone_after < Duration::from_secs(ttl as u64 + 1) + Duration::from_millis(500),
        "expired within TTL + 1 s (took {gone_after:?})"
    );
    // Nothing else writes here, so the deletion is each node's latest revision: the key exists
    // one revision earlier and not at it — the same revision on every node.
    cluster.wait_converged(Duration::from_secs(10)).await?;
    let mut delete_revs = Vec::new();
    for id in cluster.ids() {
        let mut c = etcd(&cluster, id).await?;
        let ser = etcd_client::GetOptions::new().with_serializable();
        let now = c.get(key, Some(ser.clone())).await?;
        assert_eq!(now.count(), 0);
        let rev = now.header().map(|h| h.revision()).unwrap_or_default();
        let before = c.get(key, Some(ser.with_revision(rev - 1))).await?;
        assert_eq!(
            before.count(),
            1,
            "node {id}: the key existed just before revision {rev}"
        );
        assert_eq!(
            c.lease_time_to_live(lease, None).await?.ttl(),
            -1,
            "the lease is gone"
        );
        delete_revs.push(rev);
    }
    assert!(
        delete_revs.windows(2).all(|w| w[0] == w[1]),
        "same deletion revision everywhere: {delete_revs:?}"
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribe_sees_snapshot_then_register_update_and_expiry_in_order() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let mut reg = registry(&cluster, 1).await?;
    reg.register(pb::RegisterRequest {
        instance: Some(instance("api", "10.0.0.1", 80)),
        ..Default::default()
    })
    .await?;
    // Subscribe on another node than the writes.
    let mut sub = registry(&cluster, 3).await?;
    let mut stream = sub
        .subscribe(pb::SubscribeRequest {
            service: "api".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let snap = next(&mut stream).await?;
    assert!(snap.snapshot);
    assert_eq!(snap.events.len(), 1);

    let eph = pb::Instance {
        ephemeral: true,
        ..instance("api", "10.0.0.2", 80)
    };
    reg.register(pb::RegisterRequest {
        instance: Some(eph),
        ttl_secs: 2,
        ..Default::default()
    })
    .await?;
    let key = pb::InstanceKey {
        service: "api".into(),
        instance_id: "10.0.0.1:80".into(),
        ..Default::default()
    };
    reg.update(pb::UpdateRequest {
        key: Some(key),
        weight: Some(7),
        ..Default::default()
    })
    .await?;

    // Register, update, then the ephemeral instance's expiry (no keep-alives), in order.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let m = next(&mut stream).await?;
        assert!(!m.snapshot);
        for e in m.events {
            let i = e.instance.clone().unwrap_or_default();
            seen.push((e.kind, i.instance_id, i.weight, e.revision));
        }
    }
    use pb::instance_event::Kind;
    assert_eq!(
        (seen[0].0, seen[0].1.as_str()),
        (Kind::Upsert as i32, "10.0.0.2:80")
    );
    assert_eq!(
        (seen[1].0, seen[1].1.as_str(), seen[1].2),
        (Kind::Upsert as i32, "10.0.0.1:80", Some(7))
    );
    assert_eq!(
        (seen[2].0, seen[2].1.as_str()),
        (Kind::Delete as i32, "10.0.0.2:80")
    );
    assert!(
        seen.windows(2).all(|w| w[0].3 < w[1].3),
        "revision order: {seen:?}"
    );
    assert!(
        seen[0].3 > snap.revision,
        "nothing between the snapshot and the first event is lost"
    );

    // Resume from a revision replays the same changes.
    let mut again = sub
        .subscribe(pb::SubscribeRequest {
            service: "api".into(),
            start_revision: seen[1].3,
            ..Default::default()
        })
        .await?
        .into_inner();
    let m = next(&mut again).await?;
    assert_eq!(m.events.first().map(|e| e.revision), Some(seen[1].3));
    cluster.shutdown().await;
    Ok(())
}
