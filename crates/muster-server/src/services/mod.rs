//! The service layer: what the registry does, as plain async functions over domain types
//! (`muster_types`), called by every front door — the gRPC services today; the HTTP gateway,
//! Consul, DNS and other registries' protocols later. A door decodes its wire format, calls a
//! service, and encodes the answer; it holds no logic of its own.
//!
//! One place per rule: validation and limits are applied below these functions (every write
//! passes `Node::write`, which runs `Limits::check_command`), request-id wrapping happens here,
//! and the per-request checks still to come (authentication, permissions, rate limits) go in
//! [`RequestCtx`] and the functions here, never in a door.
//!
//! Layout:
//! - [`kv`]: Range, Put, DeleteRange, Txn, Compact.
//! - [`lease`]: grant, revoke, keep-alive, time-to-live, list (over the leader's lease keeper).
//! - [`registry`]: register, deregister, update, discover, list services — the registry's key
//!   layout and JSON values.
//! - [`cluster`]: members and membership changes.
//! - [`maintenance`]: alarms, backups (Snapshot), keyspace hash (HashKV), leadership
//!   transfer (MoveLeader).

pub mod cluster;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod registry;

use std::sync::Arc;

use muster_types::{Command, CommandResponse, ResponseBody};

use crate::error::ServerError;
use crate::lease_keeper::LeaseKeeper;
use crate::node::Node;

/// What a front door knows about the caller of one request, beyond its arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestCtx {
    /// The client's idempotency key (gRPC metadata `x-muster-request-id`): retries of one
    /// request carrying it are applied once.
    pub request_id: Option<String>,
}

impl RequestCtx {
    /// A request without an idempotency key.
    pub fn none() -> RequestCtx {
        RequestCtx::default()
    }

    /// `cmd`, de-duplicated by the applier when the caller sent a request id.
    pub fn idempotent(&self, cmd: Command) -> Command {
        cmd.idempotent(self.request_id.clone())
    }
}

/// Every service of one node; cheap to clone.
#[derive(Clone)]
pub struct Services {
    pub kv: kv::Kv,
    pub lease: lease::Leases,
    pub registry: registry::Registry,
    pub cluster: cluster::Cluster,
    pub maintenance: maintenance::Maintenance,
}

impl Services {
    /// The services over `node` and its lease keeper.
    pub fn new(node: Arc<Node>, keeper: Arc<LeaseKeeper>) -> Services {
        Services {
            kv: kv::Kv::new(node.clone()),
            lease: lease::Leases::new(keeper.clone()),
            registry: registry::Registry::new(node.clone(), keeper),
            cluster: cluster::Cluster::new(node.clone()),
            maintenance: maintenance::Maintenance::new(node),
        }
    }
}

/// Splits an apply result into the revision and the body, mapping domain failures.
pub(crate) fn body(resp: CommandResponse) -> Result<(i64, ResponseBody), ServerError> {
    let body = resp.result?;
    Ok((resp.revision, body))
}

fn unexpected(expected: &'static str) -> ServerError {
    ServerError::UnexpectedResponse { expected }
}
