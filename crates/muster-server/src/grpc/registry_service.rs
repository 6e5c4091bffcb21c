//! `muster.v1.Registry`: registry calls compiled down to KV, lease and watch operations (and
//! Register to its own `Command::Register`: lease grant + put in one entry), so one revision
//! sequence orders registry and KV changes.

use std::collections::BTreeMap;
use std::sync::Arc;

use muster_proto::registrypb as pb;
use muster_proto::registrypb::registry_server::Registry;
use muster_types::pb_registry::{instance_from_pb, instance_to_pb, key_from_pb};
use muster_types::registry::{
    check_metadata, group_range, Instance, InstanceKey, ServiceName, MAX_WEIGHT,
};
use muster_types::{
    Command, Compare, CompareResult, CompareTarget, DeleteRangeRequest, InstanceLease, KeyRange,
    KeyValue, PutRequest, RangeRequest, RegisterInstance, ResponseBody, TxnOp, TxnRequest,
    ValidationError,
};
use tonic::{Request, Response, Status};

use super::{body, idempotent, request_id};
use crate::error::ServerError;
use crate::lease_keeper::LeaseKeeper;
use crate::node::Node;

/// How often Update retries its compare-and-swap when the instance changed underneath it.
const UPDATE_CAS_ATTEMPTS: usize = 5;

pub struct RegistryService {
    pub node: Arc<Node>,
    pub leases: Arc<LeaseKeeper>,
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

fn to_pb(i: Instance, kv: &KeyValue) -> pb::Instance {
    instance_to_pb(i, kv.lease, kv.mod_revision)
}

impl RegistryService {
    async fn write(&self, cmd: Command) -> Result<(i64, ResponseBody), ServerError> {
        self.write_once(cmd, None).await
    }

    /// A write the applier de-duplicates when the client sent a request id.
    async fn write_once(
        &self,
        cmd: Command,
        request_id: Option<String>,
    ) -> Result<(i64, ResponseBody), ServerError> {
        body(self.node.write(idempotent(cmd, request_id)).await?)
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

    /// One command, `Command::Register`: the lease grant (for an ephemeral instance with
    /// `ttl_secs`) and the put are one log entry and one revision, and every input of the
    /// command is fixed before proposing — the lease id comes from the request id when there
    /// is one, `registered_at_ms` from the entry's leader time in apply — so a client retry
    /// with the same request id proposes the identical command and gets the first answer.
    async fn register(
        &self,
        req: pb::RegisterRequest,
        request_id: Option<String>,
    ) -> Result<pb::RegisterResponse, ServerError> {
        let p = req.instance.ok_or_else(|| invalid("instance", "missing"))?;
        // 0: the applier stamps the entry's leader time (see `Command::Register`).
        let instance = instance_from_pb(p, 0)?;
        let lease = match (instance.ephemeral, req.lease_id, req.ttl_secs) {
            (false, 0, _) => InstanceLease::Persistent,
            (false, _, _) => return Err(invalid("lease_id", "a persistent instance has no lease")),
            (true, 0, ttl) if ttl <= 0 => {
                return Err(invalid(
                    "ttl_secs",
                    "an ephemeral instance needs ttl_secs > 0 or a lease_id",
                ))
            }
            (true, 0, ttl) => {
                let (id, ttl_secs) = self.leases.new_lease(0, ttl, request_id.as_deref())?;
                InstanceLease::Grant { id, ttl_secs }
            }
            (true, id, _) => InstanceLease::Attach(id),
        };
        let key = instance.key().key();
        let instance_id = instance.instance_id.clone();
        let cmd = idempotent(
            Command::Register(Box::new(RegisterInstance { instance, lease })),
            request_id,
        );
        // The leader's keeper must start the granted lease's deadline, as for a LeaseGrant
        // (a forwarded command is observed on the leader, in `raft_service.rs`).
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
                Ok(pb::RegisterResponse {
                    revision,
                    lease_id,
                    instance_id,
                })
            }
            _ => Err(ServerError::UnexpectedResponse {
                expected: "register",
            }),
        }
    }

    async fn deregister(
        &self,
        req: pb::DeregisterRequest,
        request_id: Option<String>,
    ) -> Result<pb::DeregisterResponse, ServerError> {
        let key = key_from_pb(req.key)?;
        let del = DeleteRangeRequest {
            range: KeyRange::single(key.key()),
            prev_kv: false,
        };
        match self
            .write_once(Command::DeleteRange(del), request_id)
            .await?
        {
            (revision, ResponseBody::DeleteRange(d)) => Ok(pb::DeregisterResponse {
                revision,
                deleted: d.deleted > 0,
            }),
            _ => Err(ServerError::UnexpectedResponse {
                expected: "delete_range",
            }),
        }
    }

    /// Read, modify, compare-and-swap on mod_revision; retried when another writer won.
    ///
    /// Not wrapped in a request id, on purpose: a client retry re-reads and builds a new CAS
    /// (another mod_revision), which the de-duplication would refuse as `RequestIdReused`. The
    /// patch sets absolute values, so applying it twice leaves the same instance (at worst one
    /// more revision and event); the client treats Update as an overwrite for that reason.
    async fn update(&self, req: pb::UpdateRequest) -> Result<pb::UpdateResponse, ServerError> {
        let key = key_from_pb(req.key)?;
        if let Some(w) = req.weight {
            if w > MAX_WEIGHT {
                return Err(invalid(
                    "weight",
                    format!("{w} is above the maximum {MAX_WEIGHT}"),
                ));
            }
        }
        let patch: BTreeMap<String, String> = req.metadata.into_iter().collect();
        for _ in 0..UPDATE_CAS_ATTEMPTS {
            let (kvs, _) = self.read(KeyRange::single(key.key()), false).await?;
            let kv = kvs
                .into_iter()
                .next()
                .ok_or(ServerError::NotFound { what: "instance" })?;
            let mut i = decode(&kv).ok_or(ServerError::NotFound { what: "instance" })?;
            if let Some(w) = req.weight {
                i.weight = w;
            }
            if req.replace_metadata {
                i.metadata = patch.clone();
            } else {
                i.metadata.extend(patch.clone());
            }
            check_metadata(&i.metadata)?;
            if let Some(e) = req.enabled {
                i.enabled = e;
            }
            if let Some(h) = req.healthy {
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
            match self.write(Command::Txn(txn)).await? {
                (revision, ResponseBody::Txn(t)) if t.succeeded => {
                    return Ok(pb::UpdateResponse {
                        revision,
                        instance: Some(instance_to_pb(i, kv.lease, revision)),
                    })
                }
                (_, ResponseBody::Txn(_)) => continue,
                _ => return Err(ServerError::UnexpectedResponse { expected: "txn" }),
            }
        }
        Err(ServerError::Conflict {
            what: "instance changed concurrently; update retried and gave up",
        })
    }

    async fn discover(
        &self,
        req: pb::DiscoverRequest,
    ) -> Result<pb::DiscoverResponse, ServerError> {
        let service = ServiceName::new(&req.namespace, &req.group, &req.service)?;
        let (kvs, revision) = self.read(service.range(), req.serializable).await?;
        let instances = kvs
            .iter()
            .filter_map(|kv| decode(kv).map(|i| (i, kv)))
            .filter(|(i, _)| !req.healthy_only || i.is_available())
            .filter(|(i, _)| {
                req.metadata_selector
                    .iter()
                    .all(|(k, v)| i.metadata.get(k) == Some(v))
            })
            .filter(|(i, _)| req.clusters.is_empty() || req.clusters.contains(&i.cluster))
            .map(|(i, kv)| to_pb(i, kv))
            .collect();
        Ok(pb::DiscoverResponse {
            revision,
            instances,
        })
    }

    async fn list_services(
        &self,
        req: pb::ListServicesRequest,
    ) -> Result<pb::ListServicesResponse, ServerError> {
        let (kvs, revision) = self
            .read(group_range(&req.namespace, &req.group)?, req.serializable)
            .await?;
        let mut services: BTreeMap<String, (u32, u32)> = BTreeMap::new();
        for i in kvs.iter().filter_map(decode) {
            let e = services.entry(i.service.clone()).or_default();
            e.0 += 1;
            e.1 += u32::from(i.is_available());
        }
        let services = services
            .into_iter()
            .map(
                |(service, (instances, healthy_instances))| pb::ServiceSummary {
                    service,
                    instances,
                    healthy_instances,
                },
            )
            .collect();
        Ok(pb::ListServicesResponse { revision, services })
    }
}

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let rid = request_id(&req)?;
        Ok(Response::new(
            RegistryService::register(self, req.into_inner(), rid).await?,
        ))
    }

    async fn deregister(
        &self,
        req: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let rid = request_id(&req)?;
        Ok(Response::new(
            RegistryService::deregister(self, req.into_inner(), rid).await?,
        ))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::UpdateResponse>, Status> {
        Ok(Response::new(
            RegistryService::update(self, req.into_inner()).await?,
        ))
    }

    async fn discover(
        &self,
        req: Request<pb::DiscoverRequest>,
    ) -> Result<Response<pb::DiscoverResponse>, Status> {
        Ok(Response::new(
            RegistryService::discover(self, req.into_inner()).await?,
        ))
    }

    async fn list_services(
        &self,
        req: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        Ok(Response::new(
            RegistryService::list_services(self, req.into_inner()).await?,
        ))
    }

    type SubscribeStream = super::registry_subscribe::SubscribeStream;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Ok(Response::new(
            super::registry_subscribe::subscribe(self.node.clone(), req.into_inner()).await?,
        ))
    }
}
