//! gRPC front doors, one file per service: each handler decodes the wire message into domain
//! types, calls the service layer (`crate::services`) and encodes the answer; no logic lives
//! here. Errors become statuses in one place (`crate::error`). The streaming services (Watch,
//! registry Subscribe, lease keep-alive streams) keep their stream protocol here.

pub mod cluster_service;
pub mod kv_service;
pub mod lease_service;
pub mod maintenance_service;
pub mod raft_service;
pub mod registry_service;
pub mod registry_subscribe;
pub mod watch_service;

use muster_proto::etcdserverpb::ResponseHeader;

use crate::error::ServerError;
use crate::node::Node;
use crate::services::RequestCtx;

impl Node {
    /// The etcd response header at `revision`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        muster_types::pb::header(self.cluster_id, self.id, revision, self.term())
    }
}

/// What the request's metadata says about its caller: the idempotency key
/// (`x-muster-request-id`), if it sent one.
pub(crate) fn request_ctx<T>(req: &tonic::Request<T>) -> Result<RequestCtx, ServerError> {
    let Some(v) = req.metadata().get(lease_service::REQUEST_ID_HEADER) else {
        return Ok(RequestCtx::none());
    };
    let s = v
        .to_str()
        .map_err(|_| muster_types::ValidationError::InvalidArgument {
            field: lease_service::REQUEST_ID_HEADER,
            reason: "must be visible ASCII".into(),
        })?;
    Ok(RequestCtx {
        request_id: Some(s.to_string()),
    })
}
