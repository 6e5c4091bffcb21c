//! Leases: which exist (id, TTL; persisted as lease records) and which keys are attached to each
//! (in memory only: derived from the keys' `lease` fields, rebuilt on open). Also applies
//! LeaseGrant, LeaseRevoke and LeaseExpire. Deadlines are not here: keep-alives are leader-side
//! memory (`muster-server`'s lease keeper), and expiry reaches the store as a replicated,
//! batched LeaseExpire, decided by the leader; nothing here reads a clock.

use std::collections::{BTreeMap, BTreeSet};

use muster_types::{ApplyError, ResponseBody};
use serde::{Deserialize, Serialize};

use super::apply::WriteCtx;
use super::codec::{encode_lease, lease_key, LeaseRecord};
use super::Mvcc;
use crate::error::StoreError;

/// A lease as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub id: i64,
    /// The TTL granted, in seconds.
    pub ttl_secs: i64,
    /// Keys attached to the lease, in key order.
    pub keys: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lease {
    pub id: i64,
    pub ttl_secs: i64,
    pub keys: BTreeSet<Vec<u8>>,
}

impl Lease {
    fn info(&self) -> LeaseInfo {
        LeaseInfo {
            id: self.id,
            ttl_secs: self.ttl_secs,
            keys: self.keys.iter().cloned().collect(),
        }
    }
}

/// Every granted lease, by id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Leases {
    map: BTreeMap<i64, Lease>,
    /// +1 whenever a lease is granted or removed. Local bookkeeping, not replicated state: the
    /// leader's keeper compares it to skip re-reading an unchanged lease set.
    generation: u64,
}

impl Leases {
    pub fn contains(&self, id: i64) -> bool {
        self.map.contains_key(&id)
    }

    pub fn grant(&mut self, id: i64, ttl_secs: i64) {
        self.generation += 1;
        self.map.insert(
            id,
            Lease {
                id,
                ttl_secs,
                keys: BTreeSet::new(),
            },
        );
    }

    pub fn remove(&mut self, id: i64) -> Option<Lease> {
        let removed = self.map.remove(&id);
        if removed.is_some() {
            self.generation += 1;
        }
        removed
    }

    /// Attaches `key` to lease `id`; false when there is no such lease (id 0 = no lease is fine).
    pub fn attach(&mut self, id: i64, key: &[u8]) -> bool {
        if id == 0 {
            return true;
        }
        match self.map.get_mut(&id) {
            Some(lease) => {
                lease.keys.insert(key.to_vec());
                true
            }
            None => false,
        }
    }

    pub fn detach(&mut self, id: i64, key: &[u8]) {
        if let Some(lease) = self.map.get_mut(&id) {
            lease.keys.remove(key);
        }
    }

    pub fn info(&self, id: i64) -> Option<LeaseInfo> {
        self.map.get(&id).map(Lease::info)
    }

    pub fn infos(&self) -> Vec<LeaseInfo> {
        self.map.values().map(Lease::info).collect()
    }
}

impl Mvcc {
    /// A lease and its attached keys.
    pub fn lease(&self, id: i64) -> Option<LeaseInfo> {
        self.leases.info(id)
    }

    /// Every lease, by id.
    pub fn leases(&self) -> Vec<LeaseInfo> {
        self.leases.infos()
    }

    /// Every lease's (id, TTL in seconds), by id, without the attached keys (cheap enough for
    /// the leader's keeper to call with thousands of leases).
    pub fn lease_ttls(&self) -> Vec<(i64, i64)> {
        self.leases
            .map
            .values()
            .map(|l| (l.id, l.ttl_secs))
            .collect()
    }

    /// Number of leases.
    pub fn lease_count(&self) -> usize {
        self.leases.map.len()
    }

    /// The TTL of lease `id`, if it exists.
    pub fn lease_ttl(&self, id: i64) -> Option<i64> {
        self.leases.map.get(&id).map(|l| l.ttl_secs)
    }

    /// Changes whenever a lease is granted or removed on this node (in-memory counter, starts
    /// anew on open): lets a poller skip [`Mvcc::lease_ttls`] when nothing changed.
    pub fn lease_generation(&self) -> u64 {
        self.leases.generation
    }

    /// LeaseGrant: never changes the revision.
    pub(super) fn apply_lease_grant(
        &mut self,
        w: &mut WriteCtx<'_>,
        id: i64,
        ttl_secs: i64,
    ) -> Result<Result<ResponseBody, ApplyError>, StoreError> {
        // etcd's lessor refuses the "no lease" id with the same error.
        if id == 0 {
            return Ok(Err(ApplyError::LeaseNotFound { id }));
        }
        if self.leases.contains(id) {
            return Ok(Err(ApplyError::LeaseExists { id }));
        }
        w.batch
            .insert(&lease_key(id), encode_lease(&LeaseRecord { id, ttl_secs })?);
        self.leases.grant(id, ttl_secs);
        Ok(Ok(ResponseBody::LeaseGrant { id, ttl_secs }))
    }

    /// LeaseRevoke: deletes every attached key in one revision (none if it had no keys).
    pub(super) fn apply_lease_revoke(
        &mut self,
        w: &mut WriteCtx<'_>,
        id: i64,
    ) -> Result<Result<ResponseBody, ApplyError>, StoreError> {
        let Some(lease) = self.leases.remove(id) else {
            return Ok(Err(ApplyError::LeaseNotFound { id }));
        };
        w.batch.remove(&lease_key(id));
        // The set is ordered, so keys go in key order with ascending sub-revisions, as etcd does.
        for key in &lease.keys {
            self.delete_key(w, key)?;
        }
        Ok(Ok(ResponseBody::LeaseRevoke))
    }

    /// LeaseExpire: removes every listed lease that still exists and deletes all their keys in
    /// ONE revision (none if no key was attached), in key order across the whole batch. Unknown
    /// ids (revoked meanwhile, or a repeat of this entry's proposal) are skipped, not errors.
    pub(super) fn apply_lease_expire(
        &mut self,
        w: &mut WriteCtx<'_>,
        ids: &[i64],
    ) -> Result<Result<ResponseBody, ApplyError>, StoreError> {
        let mut expired = Vec::with_capacity(ids.len());
        let mut keys = BTreeSet::new();
        for &id in ids {
            // A duplicate id finds its lease already removed and is skipped like an unknown one.
            if let Some(lease) = self.leases.remove(id) {
                w.batch.remove(&lease_key(id));
                keys.extend(lease.keys);
                expired.push(id);
            }
        }
        // A key is attached to one lease at most, so no key is deleted twice.
        for key in &keys {
            self.delete_key(w, key)?;
        }
        Ok(Ok(ResponseBody::LeaseExpire { expired }))
    }
}
