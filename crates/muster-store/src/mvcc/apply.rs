//! Applying commands: the only code that changes the keyspace. Dispatches each command, and owns
//! the two primitive writes (put one key, delete one key) that every command reduces to.
//! Compaction is in [`super::compact`], Txns in [`super::txn`], lease commands in
//! [`super::lease`], the registry's Register in [`super::register`], request-id de-duplication
//! in [`super::dedup`], alarms in [`super::alarm`].
//!
//! Everything apply reads comes from memory: the writes of earlier commands of the same group are
//! still in the caller's unapplied batch.

use muster_types::{
    AlarmMember, ApplyError, Command, CommandResponse, DeleteRangeRequest, DeleteRangeResponse,
    Event, EventKind, KeyValue, PutRequest, PutResponse, ResponseBody, Revision,
};

use super::codec::{encode_meta_revision, HistoryRecord, META_CURRENT_REVISION};
use super::Mvcc;
use crate::error::StoreError;

/// The writes of one command in progress: all of them share the main revision `main` (the
/// revision after the command), ordered by sub-revision.
pub(crate) struct WriteCtx<'a> {
    main: i64,
    next_sub: u32,
    pub batch: &'a mut sled::Batch,
    pub events: &'a mut Vec<Event>,
}

impl<'a> WriteCtx<'a> {
    fn new(main: i64, batch: &'a mut sled::Batch, events: &'a mut Vec<Event>) -> Self {
        WriteCtx {
            main,
            next_sub: 0,
            batch,
            events,
        }
    }

    fn next_rev(&mut self) -> Revision {
        let rev = Revision {
            main: self.main,
            sub: self.next_sub,
        };
        self.next_sub += 1;
        rev
    }

    /// Whether the command wrote anything (only then does it consume a revision).
    fn changed(&self) -> bool {
        self.next_sub > 0
    }
}

impl Mvcc {
    /// Applies one command. Writes go into `batch`, which the caller applies to the tree
    /// atomically (with its own meta) after a group of entries; in-memory state changes at once,
    /// so later commands of the group see earlier ones. Events are appended to `events` in
    /// revision order, with `prev_kv` filled whenever the key existed before.
    ///
    /// The revision advances by one only when the command changed a key; domain failures
    /// (`Err(ApplyError)` in the response) change nothing.
    pub fn apply(
        &mut self,
        time_ms: u64,
        cmd: &Command,
        batch: &mut sled::Batch,
        events: &mut Vec<Event>,
    ) -> Result<CommandResponse, StoreError> {
        if let Command::Batch(cmds) = cmd {
            let mut responses = Vec::with_capacity(cmds.len());
            for sub in cmds {
                responses.push(self.apply(time_ms, sub, batch, events)?);
            }
            return Ok(CommandResponse {
                revision: self.current_revision,
                result: Ok(ResponseBody::Batch(responses)),
            });
        }
        // Before de-duplication: a write an alarm refused is not remembered, so its retry
        // after the alarm is cleared applies.
        if let Some(refused) = self.alarm_refusal(cmd) {
            return Ok(CommandResponse {
                revision: self.current_revision,
                result: Err(refused),
            });
        }
        // Lease deadlines live in the leader's memory; time here is only the entry's leader
        // time: for forgetting request ids (every node forgets at the same entry) and as a
        // registration's `registered_at_ms`.
        self.dedup.prune(time_ms, batch);
        if let Command::Idempotent { request_id, cmd } = cmd {
            return self.apply_idempotent(time_ms, request_id, cmd, batch, events);
        }
        let mut w = WriteCtx::new(self.current_revision + 1, batch, events);
        let result = match cmd {
            Command::Put(p) => self.apply_put(&mut w, p)?.map(ResponseBody::Put),
            Command::DeleteRange(d) => Ok(ResponseBody::DeleteRange(self.delete_range(&mut w, d)?)),
            Command::Txn(t) => self.apply_txn(&mut w, t)?.map(ResponseBody::Txn),
            Command::Compact { revision } => self
                .apply_compact(&mut w, *revision)?
                .map(|()| ResponseBody::Compact),
            Command::LeaseGrant { id, ttl_secs } => {
                self.apply_lease_grant(&mut w, *id, *ttl_secs)?
            }
            Command::LeaseRevoke { id } => self.apply_lease_revoke(&mut w, *id)?,
            Command::LeaseExpire { ids } => self.apply_lease_expire(&mut w, ids)?,
            Command::Register(r) => self.apply_register(&mut w, time_ms, r)?,
            Command::Alarm {
                action,
                member_id,
                alarm,
            } => Ok(self.apply_alarm(
                w.batch,
                *action,
                AlarmMember {
                    member_id: *member_id,
                    alarm: *alarm,
                },
            )),
            Command::Idempotent { .. } | Command::Batch(_) => {
                unreachable!("unwrapped before dispatch")
            }
        };
        if w.changed() {
            self.current_revision = w.main;
            w.batch
                .insert(META_CURRENT_REVISION, encode_meta_revision(w.main)?);
        }
        Ok(CommandResponse {
            revision: self.current_revision,
            result,
        })
    }

    /// Test hook behind `SmShared::corrupt_value_for_testing`: rewrites `key`'s live value and
    /// its history record in place, same revision, no event.
    #[doc(hidden)]
    pub fn corrupt_value_for_testing(
        &mut self,
        batch: &mut sled::Batch,
        key: &[u8],
        value: &[u8],
    ) -> Result<bool, StoreError> {
        let Some(live) = self.index.live(key).cloned() else {
            return Ok(false);
        };
        let Some(rev) = self
            .index
            .get(key)
            .and_then(|ki| ki.revs.last())
            .map(|c| c.rev)
        else {
            return Ok(false);
        };
        let kv = KeyValue {
            value: value.to_vec(),
            ..live
        };
        self.history.write(
            batch,
            rev,
            HistoryRecord {
                kv: kv.clone(),
                tombstone: false,
            },
        )?;
        self.index.set_live_for_testing(kv);
        Ok(true)
    }

    /// A plain Put. As in etcd, the lease is checked before the key's existence.
    fn apply_put(
        &mut self,
        w: &mut WriteCtx<'_>,
        p: &PutRequest,
    ) -> Result<Result<PutResponse, ApplyError>, StoreError> {
        if p.lease != 0 && !self.leases.contains(p.lease) {
            return Ok(Err(ApplyError::LeaseNotFound { id: p.lease }));
        }
        let (value, lease) = match self.resolve_put(p) {
            Ok(resolved) => resolved,
            Err(e) => return Ok(Err(e)),
        };
        let prev = self.put_key(w, &p.key, value, lease)?;
        Ok(Ok(PutResponse {
            prev_kv: prev.filter(|_| p.prev_kv),
        }))
    }

    /// The value and lease a Put writes: ignore_value / ignore_lease keep the key's current ones
    /// and need the key to exist.
    pub(super) fn resolve_put(&self, p: &PutRequest) -> Result<(Vec<u8>, i64), ApplyError> {
        if !p.ignore_value && !p.ignore_lease {
            return Ok((p.value.clone(), p.lease));
        }
        let cur = self.index.live(&p.key).ok_or(ApplyError::KeyNotFound)?;
        let value = if p.ignore_value {
            cur.value.clone()
        } else {
            p.value.clone()
        };
        let lease = if p.ignore_lease { cur.lease } else { p.lease };
        Ok((value, lease))
    }

    /// Writes `key` at the next sub-revision; returns its previous value. The lease must exist
    /// (checked by the caller).
    pub(super) fn put_key(
        &mut self,
        w: &mut WriteCtx<'_>,
        key: &[u8],
        value: Vec<u8>,
        lease: i64,
    ) -> Result<Option<KeyValue>, StoreError> {
        let prev = self.index.live(key).cloned();
        let rev = w.next_rev();
        let kv = KeyValue {
            key: key.to_vec(),
            // A new key (or one re-created after a delete) starts over at version 1.
            create_revision: prev.as_ref().map_or(rev.main, |p| p.create_revision),
            mod_revision: rev.main,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease,
        };
        let bytes = self.history.write(
            w.batch,
            rev,
            HistoryRecord {
                kv: kv.clone(),
                tombstone: false,
            },
        )?;
        self.index.put(rev, kv.clone(), bytes);
        let old_lease = prev.as_ref().map_or(0, |p| p.lease);
        if old_lease != lease {
            self.leases.detach(old_lease, key);
            self.leases.attach(lease, key);
        }
        w.events.push(Event {
            kind: EventKind::Put,
            kv,
            prev_kv: prev.clone(),
        });
        Ok(prev)
    }

    /// Deletes `key` at the next sub-revision if it is live; returns the value it had.
    pub(super) fn delete_key(
        &mut self,
        w: &mut WriteCtx<'_>,
        key: &[u8],
    ) -> Result<Option<KeyValue>, StoreError> {
        if self.index.live(key).is_none() {
            return Ok(None);
        }
        let rev = w.next_rev();
        // What etcd stores and sends for a delete: the key and the deletion's revision only.
        let tombstone = KeyValue {
            key: key.to_vec(),
            mod_revision: rev.main,
            ..KeyValue::default()
        };
        let bytes = self.history.write(
            w.batch,
            rev,
            HistoryRecord {
                kv: tombstone.clone(),
                tombstone: true,
            },
        )?;
        let prev = self.index.delete(rev, key, bytes);
        if let Some(prev) = &prev {
            self.leases.detach(prev.lease, key);
        }
        w.events.push(Event {
            kind: EventKind::Delete,
            kv: tombstone,
            prev_kv: prev.clone(),
        });
        Ok(prev)
    }

    /// Deletes every live key in the range, in key order.
    pub(super) fn delete_range(
        &mut self,
        w: &mut WriteCtx<'_>,
        d: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, StoreError> {
        // Collected first: deleting changes the index being iterated.
        let keys: Vec<Vec<u8>> = self
            .index
            .live_in(&d.range)
            .map(|kv| kv.key.clone())
            .collect();
        let mut resp = DeleteRangeResponse::default();
        for key in keys {
            if let Some(prev) = self.delete_key(w, &key)? {
                resp.deleted += 1;
                if d.prev_kv {
                    resp.prev_kvs.push(prev);
                }
            }
        }
        Ok(resp)
    }
}
