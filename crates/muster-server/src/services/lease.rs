//! The lease service: etcd's LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive and
//! LeaseLeases. Lease time lives in the leader's lease keeper (`crate::lease_keeper`, core);
//! this is the door-facing surface over it.

use std::sync::Arc;

pub use crate::lease_keeper::{Granted, TimeToLive};

use super::RequestCtx;
use crate::error::ServerError;
use crate::lease_keeper::LeaseKeeper;

/// Lease operations of one node.
#[derive(Clone)]
pub struct Leases {
    keeper: Arc<LeaseKeeper>,
}

impl Leases {
    pub fn new(keeper: Arc<LeaseKeeper>) -> Leases {
        Leases { keeper }
    }

    /// Grants a lease of `ttl_secs` (raised to the minimum TTL); `id` 0 lets the server pick
    /// one (derived from the request id when there is one, so a retry gets the same lease).
    pub async fn grant(
        &self,
        id: i64,
        ttl_secs: i64,
        ctx: &RequestCtx,
    ) -> Result<Granted, ServerError> {
        self.keeper
            .grant(id, ttl_secs, ctx.request_id.clone())
            .await
    }

    /// Revokes a lease and deletes its keys in one revision; returns that revision.
    pub async fn revoke(&self, id: i64, ctx: &RequestCtx) -> Result<i64, ServerError> {
        self.keeper.revoke(id, ctx.request_id.clone()).await
    }

    /// Renews `ids` on the leader; each answer is `(id, ttl_secs)`, ttl 0 for an unknown lease.
    pub async fn keep_alive(&self, ids: &[i64]) -> Result<Vec<(i64, i64)>, ServerError> {
        self.keeper.keep_alive(ids).await
    }

    pub async fn time_to_live(&self, id: i64, keys: bool) -> Result<TimeToLive, ServerError> {
        self.keeper.time_to_live(id, keys).await
    }

    /// Every live lease id, with the revision they were read at.
    pub async fn leases(&self) -> Result<(i64, Vec<i64>), ServerError> {
        self.keeper.leases().await
    }
}
