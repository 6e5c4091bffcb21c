//! gRPC services, one file each. Handlers validate, convert wire messages to commands and
//! call the node; no logic lives here. Errors become statuses in one place (`crate::error`).

pub mod cluster_service;
pub mod kv_service;
pub mod lease_service;
pub mod maintenance_service;
pub mod raft_service;
pub mod registry_service;
pub mod registry_subscribe;
pub mod watch_service;

use muster_proto::etcdserverpb::ResponseHeader;
use muster_types::{CommandResponse, ResponseBody};

use crate::error::ServerError;
use crate::node::Node;

impl Node {
    /// The etcd response header at `revision`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        muster_types::pb::header(self.cluster_id, self.id, revision, self.term())
    }
}

/// Splits an apply result into the header revision and the body, mapping domain failures.
pub(crate) fn body(resp: CommandResponse) -> Result<(i64, ResponseBody), ServerError> {
    let body = resp.result?;
    Ok((resp.revision, body))
}

/// The client's idempotency key (metadata `x-muster-request-id`), if it sent one.
pub(crate) fn request_id<T>(req: &tonic::Request<T>) -> Result<Option<String>, ServerError> {
    let Some(v) = req.metadata().get(lease_service::REQUEST_ID_HEADER) else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| muster_types::ValidationError::InvalidArgument {
            field: lease_service::REQUEST_ID_HEADER,
            reason: "must be visible ASCII".into(),
        })?;
    Ok(Some(s.to_string()))
}

/// Wraps a write in the applier's de-duplication when the client sent a request id, so a retry
/// after an unknown outcome returns the first result instead of applying twice.
pub(crate) fn idempotent(
    cmd: muster_types::Command,
    request_id: Option<String>,
) -> muster_types::Command {
    match request_id {
        Some(request_id) => muster_types::Command::Idempotent {
            request_id,
            cmd: Box::new(cmd),
        },
        None => cmd,
    }
}
