//! Applies the registry's `Command::Register`: an optional lease grant and the instance's put,
//! as ONE command, so a registration is one log entry and one revision, and a request-id retry
//! of it is one command the de-duplication recognises.
//!
//! `registered_at_ms` comes from the entry's `time_ms` (the leader's clock when it proposed),
//! never from the proposer's command or a local clock: every node stores the same JSON, and
//! retries of one request carry identical commands.

use muster_types::{ApplyError, InstanceLease, RegisterInstance, ResponseBody};

use super::apply::WriteCtx;
use super::Mvcc;
use crate::error::StoreError;

impl Mvcc {
    /// Register: every check comes before the first write, so a refused registration changes
    /// nothing (a lease is never granted for a put that did not happen).
    pub(super) fn apply_register(
        &mut self,
        w: &mut WriteCtx<'_>,
        time_ms: u64,
        r: &RegisterInstance,
    ) -> Result<Result<ResponseBody, ApplyError>, StoreError> {
        let lease_id = r.lease.id();
        match r.lease {
            InstanceLease::Persistent => {}
            InstanceLease::Attach(id) => {
                if !self.leases.contains(id) {
                    return Ok(Err(ApplyError::LeaseNotFound { id }));
                }
            }
            InstanceLease::Grant { id, ttl_secs } => {
                // Checks id 0 and an existing lease itself, before it writes anything; the
                // put below cannot fail, so the grant never outlives a refused registration.
                if let Err(e) = self.apply_lease_grant(w, id, ttl_secs)? {
                    return Ok(Err(e));
                }
            }
        }
        let mut instance = r.instance.clone();
        instance.registered_at_ms = time_ms;
        self.put_key(w, &instance.key().key(), instance.to_json(), lease_id)?;
        Ok(Ok(ResponseBody::Register {
            lease_id,
            registered_at_ms: time_ms,
        }))
    }
}
