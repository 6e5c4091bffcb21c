//! `muster.v1.Registry` over gRPC: decodes each request into domain types, calls the registry
//! service (`crate::services::registry`) and encodes the answer. No registry logic lives here.

use std::sync::Arc;

use muster_proto::registrypb as pb;
use muster_proto::registrypb::registry_server::Registry;
use muster_types::pb_registry::{instance_from_pb, instance_to_pb, key_from_pb};
use muster_types::registry::ServiceName;
use muster_types::ValidationError;
use tonic::{Request, Response, Status};

use super::request_ctx;
use crate::error::ServerError;
use crate::node::Node;
use crate::services::registry::{self as svc, DiscoverQuery, InstancePatch, LeaseRequest, Listed};

pub struct RegistryService {
    pub node: Arc<Node>,
    pub registry: svc::Registry,
}

fn to_pb(l: Listed) -> pb::Instance {
    instance_to_pb(l.instance, l.lease, l.mod_revision)
}

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let ctx = request_ctx(&req)?;
        let req = req.into_inner();
        let p = req.instance.ok_or_else(|| {
            ServerError::Validation(ValidationError::InvalidArgument {
                field: "instance",
                reason: "missing".into(),
            })
        })?;
        // registered_at is the leader's time, stamped in apply.
        let instance = instance_from_pb(p, 0).map_err(ServerError::from)?;
        let lease = match (req.lease_id, req.ttl_secs) {
            (0, 0) => LeaseRequest::None,
            (0, ttl) => LeaseRequest::NewWithTtl(ttl),
            (id, _) => LeaseRequest::Existing(id),
        };
        let r = self.registry.register(instance, lease, &ctx).await?;
        Ok(Response::new(pb::RegisterResponse {
            revision: r.revision,
            lease_id: r.lease_id,
            instance_id: r.instance_id,
        }))
    }

    async fn deregister(
        &self,
        req: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let ctx = request_ctx(&req)?;
        let key = key_from_pb(req.into_inner().key).map_err(ServerError::from)?;
        let (revision, deleted) = self.registry.deregister(&key, &ctx).await?;
        Ok(Response::new(pb::DeregisterResponse { revision, deleted }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::UpdateResponse>, Status> {
        let req = req.into_inner();
        let key = key_from_pb(req.key).map_err(ServerError::from)?;
        let patch = InstancePatch {
            weight: req.weight,
            metadata: req.metadata.into_iter().collect(),
            replace_metadata: req.replace_metadata,
            enabled: req.enabled,
            healthy: req.healthy,
        };
        let (revision, listed) = self.registry.update(&key, &patch).await?;
        Ok(Response::new(pb::UpdateResponse {
            revision,
            instance: Some(to_pb(listed)),
        }))
    }

    async fn discover(
        &self,
        req: Request<pb::DiscoverRequest>,
    ) -> Result<Response<pb::DiscoverResponse>, Status> {
        let req = req.into_inner();
        let query = DiscoverQuery {
            service: ServiceName::new(&req.namespace, &req.group, &req.service)
                .map_err(ServerError::from)?,
            healthy_only: req.healthy_only,
            metadata_selector: req.metadata_selector.into_iter().collect(),
            clusters: req.clusters,
            serializable: req.serializable,
        };
        let (revision, listed) = self.registry.discover(&query).await?;
        Ok(Response::new(pb::DiscoverResponse {
            revision,
            instances: listed.into_iter().map(to_pb).collect(),
        }))
    }

    async fn list_services(
        &self,
        req: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let req = req.into_inner();
        let (revision, services) = self
            .registry
            .list_services(&req.namespace, &req.group, req.serializable)
            .await?;
        let services = services
            .into_iter()
            .map(|s| pb::ServiceSummary {
                service: s.service,
                instances: s.instances,
                healthy_instances: s.healthy_instances,
            })
            .collect();
        Ok(Response::new(pb::ListServicesResponse {
            revision,
            services,
        }))
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
