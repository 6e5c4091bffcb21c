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
