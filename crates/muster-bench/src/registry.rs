//! Service registration benchmarks.
//!
//! - `register`: Muster's own Registry.Register (persistent instances, distinct ids).
//! - `register-kv`: the pattern etcd users build by hand, through the etcd API only, so it
//!   runs against both systems: register = LeaseGrant + Put with that lease, discover = a
//!   prefix Range over one service, deregister = LeaseRevoke (which deletes the key).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use muster_proto::etcdserverpb::kv_client::KvClient;
use muster_proto::etcdserverpb::lease_client::LeaseClient;
use muster_proto::etcdserverpb::{PutRequest, RangeRequest};
use muster_proto::registrypb::registry_client::RegistryClient;
use muster_proto::registrypb::{Instance, RegisterRequest};
use muster_types::prefix_end;
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::common::{run_id, worker_channels};
use crate::lease::{grant_one, revoke};
use crate::load::{closed_loop, workers, Op};

/// A made-up address for instance `seq`.
fn address(seq: usize) -> String {
    format!(
        "10.{}.{}.{}",
        (seq >> 16) & 255,
        (seq >> 8) & 255,
        seq & 255
    )
}

struct RegisterOp {
    registry: RegistryClient<Channel>,
    service: String,
    run: u128,
}

impl Op for RegisterOp {
    async fn call(&mut self, seq: usize) -> anyhow::Result<()> {
        let req = RegisterRequest {
            instance: Some(Instance {
                service: self.service.clone(),
                instance_id: format!("bench-{}-{seq}", self.run),
                address: address(seq),
                port: 8080,
                ephemeral: false,
                ..Default::default()
            }),
            ttl_secs: 0,
            lease_id: 0,
        };
        self.registry.register(req).await.context("Register")?;
        Ok(())
    }
}

/// `register`: `count` Registry.Register calls from `concurrency` clients.
pub async fn bench_register(
    endpoints: &[String],
    count: usize,
    concurrency: usize,
    service: &str,
    deadline: Instant,
) -> anyhow::Result<Value> {
    // Distinct ids across runs, too, so a rerun measures creates rather than overwrites.
    let run = run_id();
    let ops = workers(endpoints, concurrency, |ch| RegisterOp {
        registry: RegistryClient::new(ch),
        service: service.to_string(),
        run,
    })
    .await?;
    let (s, _) = closed_loop(ops, count, deadline, "registers").await?;
    Ok(s.json_with(
        "register",
        json!({"concurrency": concurrency, "persistent": true}),
    ))
}

/// Where `register-kv` keeps instances: `<root><service>/<instance>`.
struct Layout {
    root: String,
    services: usize,
}

impl Layout {
    fn service_prefix(&self, seq: usize) -> String {
        format!("{}svc-{}/", self.root, seq % self.services)
    }
}

/// Register = LeaseGrant(ttl) + Put(instance key, lease); both timed as one operation.
struct RegisterKvOp {
    lease: LeaseClient<Channel>,
    kv: KvClient<Channel>,
    layout: Arc<Layout>,
    ttl: i64,
    leases: Vec<i64>,
}

impl Op for RegisterKvOp {
    async fn call(&mut self, seq: usize) -> anyhow::Result<()> {
        let id = grant_one(&mut self.lease, self.ttl).await?;
        self.leases.push(id);
        let key = format!("{}inst-{seq}", self.layout.service_prefix(seq));
        let value = format!(r#"{{"address":"{}","port":8080}}"#, address(seq));
        self.kv
            .put(PutRequest {
                key: key.into_bytes(),
                value: value.into_bytes(),
                lease: id,
                ..Default::default()
            })
            .await
            .context("Put with lease")?;
        Ok(())
    }
}

/// Discover = a linearizable prefix Range over one service's instances.
struct DiscoverOp {
    kv: KvClient<Channel>,
    layout: Arc<Layout>,
    found: usize,
}

impl Op for DiscoverOp {
    async fn call(&mut self, seq: usize) -> anyhow::Result<()> {
        let key = self.layout.service_prefix(seq).into_bytes();
        let range_end = prefix_end(&key);
        let r = self
            .kv
            .range(RangeRequest {
                key,
                range_end,
                ..Default::default()
            })
            .await
            .context("Range (discover)")?
            .into_inner();
        anyhow::ensure!(!r.kvs.is_empty(), "discover found no instance");
        self.found += r.kvs.len();
        Ok(())
    }
}

/// `register-kv`: `count` registrations over `services` services, `discovers` discovers, then
/// every lease revoked (deregistration), all from `concurrency` clients.
pub async fn bench_register_kv(
    endpoints: &[String],
    count: usize,
    concurrency: usize,
    services: usize,
    discovers: usize,
    ttl: i64,
    deadline: Instant,
) -> anyhow::Result<Value> {
    let layout = Arc::new(Layout {
        root: format!("/services/bench-{}/", run_id()),
        services: services.clamp(1, count.max(1)),
    });
    let chans = worker_channels(endpoints, concurrency.max(1)).await?;
    let ops = chans
        .iter()
        .map(|ch| RegisterKvOp {
            lease: LeaseClient::new(ch.clone()),
            kv: KvClient::new(ch.clone()),
            layout: layout.clone(),
            ttl,
            leases: Vec::new(),
        })
        .collect();
    let (reg, ops) = closed_loop(ops, count, deadline, "registrations").await?;
    let leases: Vec<i64> = ops.into_iter().flat_map(|o| o.leases).collect();
    // Discover only services that got an instance before the deadline.
    let services = layout.services.min(reg.len()).max(1);
    let layout = Arc::new(Layout {
        root: layout.root.clone(),
        services,
    });
    let ops = chans
        .iter()
        .map(|ch| DiscoverOp {
            kv: KvClient::new(ch.clone()),
            layout: layout.clone(),
            found: 0,
        })
        .collect();
    let (disc, ops) = closed_loop(ops, discovers, deadline, "discovers").await?;
    let found: usize = ops.iter().map(|o| o.found).sum();
    let dereg = revoke(&chans, leases, deadline).await?;
    Ok(json!({
        "what": "register-kv", "concurrency": concurrency, "services": services, "ttl": ttl,
        "register": reg.json(),
        "discover": disc.json(),
        "instances_per_discover": found as f64 / disc.len().max(1) as f64,
        "deregister": dereg.json(),
    }))
}
