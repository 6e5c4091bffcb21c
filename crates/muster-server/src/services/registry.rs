//! The registry service: namespace / group / service / instance over the KV keyspace. An
//! instance is the JSON value at `/muster/registry/{namespace}/{group}/{service}/{instance_id}`
//! (`muster_types::registry`), so one revision sequence orders registry and KV changes and an
//! etcd client sees the registry as keys. Register is its own command (`Command::Register`:
//! lease grant + put in one entry); the rest compile down to KV operations.

use std::collections::BTreeMap;
use std::sync::Arc;

use muster_types::registry::{
    check_metadata, group_range, Instance, InstanceKey, ServiceName, MAX_WEIGHT,
};
use muster_types::{
    Command, Compare, CompareResult, CompareTarget, DeleteRangeRequest, InstanceLease, KeyRange,
    KeyValue, PutRequest, RangeRequest, RegisterInstance, ResponseBody, TxnOp, TxnRequest,
    ValidationError,
};

use super::{body, unexpected, RequestCtx};
use crate::error::ServerError;
use crate::lease_keeper::LeaseKeeper;
use crate::node::Node;

/// How often Update retries its compare-and-swap when the instance changed underneath it.
const UPDATE_CAS_ATTEMPTS: usize = 5;

/// What an instance is bound to, as the caller asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseRequest {
    /// A persistent instance: no lease.
    None,
    /// An ephemeral instance on an existing lease.
    Existing(i64),
    /// An ephemeral instance on a new lease of this TTL, granted with it.
    NewWithTtl(i64),
}

/// A registration's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub revision: i64,
    pub lease_id: i64,
    pub instance_id: String,
}

/// Changes to one instance; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstancePatch {
    pub weight: Option<u32>,
    pub metadata: BTreeMap<String, String>,
    /// Replace the metadata with `metadata` instead of merging it in.
    pub replace_metadata: bool,
    pub enabled: Option<bool>,
    pub healthy: Option<bool>,
}

/// An instance as stored: its value, lease and last modification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub instance: Instance,
    pub lease: i64,
    pub mod_revision: i64,
}

/// Which instances of a service a discovery wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverQuery {
    pub service: ServiceName,
    /// Only instances that take traffic (healthy and enabled).
    pub healthy_only: bool,
    /// Every pair must be in the instance's metadata.
    pub metadata_selector: BTreeMap<String, String>,
    /// Only these clusters (all when empty).
    pub clusters: Vec<String>,
    pub serializable: bool,
}

/// One service of a group, counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSummary {
    pub service: String,
    pub instances: u32,
    pub healthy_instances: u32,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ServerError {
    ServerError::Validation(ValidationError::InvalidArgument {
        field,
        reason: reason.into(),
    })
}

/// Decodes a stored instance; a value that is not an instance (written by hand through the KV
/// API) is skipped rather than failing the whole listing.
fn decode(kv: &KeyValue) -> Option<Instance> {
    let i = Instance::from_json(&kv.value)?;
    (InstanceKey::parse(&kv.key).as_ref() == Some(&i.key())).then_some(i)
}

/// Registry operations of one node.
#[derive(Clone)]
pub struct Registry {
    node: Arc<Node>,
    leases: Arc<LeaseKeeper>,
}

impl Registry {
    pub fn new(node: Arc<Node>, leases: Arc<LeaseKeeper>) -> Registry {
        Registry { node, leases }
    }

    async fn write(
        &self,
        cmd: Command,
        ctx: &RequestCtx,
    ) -> Result<(i64, ResponseBody), ServerError> {
        body(self.node.write(ctx.idempotent(cmd)).await?)
    }

    async fn read(
        &self,
        range: KeyRange,
        serializable: bool,
    ) -> Result<(Vec<KeyValue>, i64), ServerError> {
        let req = RangeRequest {
            range,
            serializable,
            ..Default::default()
        };
        let (resp, revision) = self.node.range(&req).await?;
        Ok((resp.kvs, revision))
    }

    /// One command, `Command::Register`: the lease grant (for an ephemeral instance with a
    /// TTL) and the put are one log entry and one revision, and every input of the command is
    /// fixed before proposing — the lease id comes from the request id when there is one,
    /// `registered_at_ms` from the entry's leader time in apply (pass any value in
    /// `instance.registered_at_ms`: it is overwritten) — so a client retry with the same
    /// request id proposes the identical command and gets the first answer.
    pub async fn register(
        &self,
        mut instance: Instance,
        lease: LeaseRequest,
        ctx: &RequestCtx,
    ) -> Result<Registered, ServerError> {
        instance.registered_at_ms = 0;
        let lease = match (instance.ephemeral, lease) {
            // A TTL means nothing to a persistent instance; it is ignored (as it always was).
            (false, LeaseRequest::None | LeaseRequest::NewWithTtl(_)) => InstanceLease::Persistent,
            (false, LeaseRequest::Existing(_)) => {
                return Err(invalid("lease_id", "a persistent instance has no lease"))
            }
            (true, LeaseRequest::None) | (true, LeaseRequest::NewWithTtl(i64::MIN..=0)) => {
                return Err(invalid(
                    "ttl_secs",
                    "an ephemeral instance needs ttl_secs > 0 or a lease_id",
                ))
            }
            (true, LeaseRequest::NewWithTtl(ttl)) => {
                let (id, ttl_secs) = self.leases.new_lease(0, ttl, ctx.request_id.as_deref())?;
                InstanceLease::Grant { id, ttl_secs }
            }
            (true, LeaseRequest::Existing(id)) => InstanceLease::Attach(id),
        };
        let key = instance.key().key();
        let instance_id = instance.instance_id.clone();
        let cmd = ctx.idempotent(Command::Register(Box::new(RegisterInstance {
            instance,
            lease,
        })));
        // The leader's keeper must start the granted lease's deadline, as for a LeaseGrant
        // (a forwarded command is observed on the leader, in `grpc/raft_service.rs`).
        let observed = LeaseKeeper::observes(&cmd).then(|| cmd.clone());
        let resp = self.node.write(cmd).await?;
        if let Some(cmd) = &observed {
            self.leases.observe(cmd, &resp);
        }
        match body(resp)? {
            (
                revision,
                ResponseBody::Register {
                    lease_id,
                    registered_at_ms,
                },
            ) => {
                tracing::info!(
                    key = %String::from_utf8_lossy(&key),
                    lease_id,
                    revision,
                    registered_at_ms,
                    "registered"
                );
                Ok(Registered {
                    revision,
                    lease_id,
                    instance_id,
                })
            }
            _ => Err(unexpected("register")),
        }
    }

    /// Removes an instance; returns the revision and whether it existed.
    pub async fn deregister(
        &self,
        key: &InstanceKey,
        ctx: &RequestCtx,
    ) -> Result<(i64, bool), ServerError> {
        let del = DeleteRangeRequest {
            range: KeyRange::single(key.key()),
            prev_kv: false,
        };
        match self.write(Command::DeleteRange(del), ctx).await? {
            (revision, ResponseBody::DeleteRange(d)) => Ok((revision, d.deleted > 0)),
            _ => Err(unexpected("delete_range")),
        }
    }

    /// Read, modify, compare-and-swap on mod_revision; retried when another writer won.
    /// Returns the revision and the instance as written.
    ///
    /// Not wrapped in a request id, on purpose: a client retry re-reads and builds a new CAS
    /// (another mod_revision), which the de-duplication would refuse as `RequestIdReused`. The
    /// patch sets absolute values, so applying it twice leaves the same instance (at worst one
    /// more revision and event); the client treats Update as an overwrite for that reason.
    pub async fn update(
        &self,
        key: &InstanceKey,
        patch: &InstancePatch,
    ) -> Result<(i64, Listed), ServerError> {
        if let Some(w) = patch.weight {
            if w > MAX_WEIGHT {
                return Err(invalid(
                    "weight",
                    format!("{w} is above the maximum {MAX_WEIGHT}"),
                ));
            }
        }
        for _ in 0..UPDATE_CAS_ATTEMPTS {
            let (kvs, _) = self.read(KeyRange::single(key.key()), false).await?;
            let kv = kvs
                .into_iter()
                .next()
                .ok_or(ServerError::NotFound { what: "instance" })?;
            let mut i = decode(&kv).ok_or(ServerError::NotFound { what: "instance" })?;
            if let Some(w) = patch.weight {
                i.weight = w;
            }
            if patch.replace_metadata {
                i.metadata = patch.metadata.clone();
            } else {
                i.metadata.extend(patch.metadata.clone());
            }
            check_metadata(&i.metadata)?;
            if let Some(e) = patch.enabled {
                i.enabled = e;
            }
            if let Some(h) = patch.healthy {
                i.healthy = h;
            }
            let txn = TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal,
                    target: CompareTarget::Mod(kv.mod_revision),
                    range: KeyRange::single(key.key()),
                }],
                success: vec![TxnOp::Put(PutRequest {
                    key: key.key(),
                    value: i.to_json(),
                    ignore_lease: true,
                    ..Default::default()
                })],
                failure: vec![],
            };
            match self.write(Command::Txn(txn), &RequestCtx::none()).await? {
                (revision, ResponseBody::Txn(t)) if t.succeeded => {
                    let listed = Listed {
                        instance: i,
                        lease: kv.lease,
                        mod_revision: revision,
                    };
                    return Ok((revision, listed));
                }
                (_, ResponseBody::Txn(_)) => continue,
                _ => return Err(unexpected("txn")),
            }
        }
        Err(ServerError::Conflict {
            what: "instance changed concurrently; update retried and gave up",
        })
    }

    /// The instances of a service that match `q`, with the revision they were read at.
    pub async fn discover(&self, q: &DiscoverQuery) -> Result<(i64, Vec<Listed>), ServerError> {
        let (kvs, revision) = self.read(q.service.range(), q.serializable).await?;
        let instances = kvs
            .iter()
            .filter_map(|kv| decode(kv).map(|i| (i, kv)))
            .filter(|(i, _)| !q.healthy_only || i.is_available())
            .filter(|(i, _)| {
                q.metadata_selector
                    .iter()
                    .all(|(k, v)| i.metadata.get(k) == Some(v))
            })
            .filter(|(i, _)| q.clusters.is_empty() || q.clusters.contains(&i.cluster))
            .map(|(instance, kv)| Listed {
                instance,
                lease: kv.lease,
                mod_revision: kv.mod_revision,
            })
            .collect();
        Ok((revision, instances))
    }

    /// The services of a group (empty names mean the default namespace and group), each with
    /// its instance counts.
    pub async fn list_services(
        &self,
        namespace: &str,
        group: &str,
        serializable: bool,
    ) -> Result<(i64, Vec<ServiceSummary>), ServerError> {
        let (kvs, revision) = self
            .read(group_range(namespace, group)?, serializable)
            .await?;
        let mut services: BTreeMap<String, (u32, u32)> = BTreeMap::new();
        for i in kvs.iter().filter_map(decode) {
            let e = services.entry(i.service.clone()).or_default();
            e.0 += 1;
            e.1 += u32::from(i.is_available());
        }
        let services = services
            .into_iter()
            .map(|(service, (instances, healthy_instances))| ServiceSummary {
                service,
                instances,
                healthy_instances,
            })
            .collect();
        Ok((revision, services))
    }
}
