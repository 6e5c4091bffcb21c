//! The registry's Register: lease grant and instance put in one revision, `registered_at_ms`
//! from the entry's leader time, refusals that change nothing, and a request-id repeat that
//! replays the first answer.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use muster_types::registry::Instance;
use muster_types::{ApplyError, Command, EventKind, InstanceLease, RegisterInstance, ResponseBody};

use super::test_util::*;

const KEY: &str = "/muster/registry/public/DEFAULT_GROUP/orders/10.0.0.1:8080";

fn instance() -> Instance {
    Instance {
        namespace: "public".into(),
        group: "DEFAULT_GROUP".into(),
        service: "orders".into(),
        instance_id: "10.0.0.1:8080".into(),
        address: "10.0.0.1".into(),
        port: 8080,
        weight: 100,
        metadata: BTreeMap::from([("zone".into(), "a".into())]),
        healthy: true,
        enabled: true,
        ephemeral: true,
        cluster: String::new(),
        registered_at_ms: 0,
    }
}

fn register(lease: InstanceLease) -> Command {
    Command::Register(Box::new(RegisterInstance {
        instance: instance(),
        lease,
    }))
}

fn once(request_id: &str, cmd: Command) -> Command {
    Command::Idempotent {
        request_id: request_id.into(),
        cmd: Box::new(cmd),
    }
}

/// The stored instance at KEY.
fn stored(h: &H) -> Instance {
    Instance::from_json(&h.get(KEY).unwrap().value).unwrap()
}

#[test]
fn a_grant_and_put_are_one_revision_with_the_entry_time() {
    let mut h = H::new();
    h.put("other", "x");
    let (rev, events_before) = (h.rev() + 1, h.events.len());
    let r = h.apply_at(
        42_000,
        register(InstanceLease::Grant {
            id: 7,
            ttl_secs: 10,
        }),
    );
    assert_eq!(
        (r.revision, r.result),
        (
            rev,
            Ok(ResponseBody::Register {
                lease_id: 7,
                registered_at_ms: 42_000
            })
        ),
        "one revision for grant + put"
    );
    assert_eq!(h.mvcc.lease_ttls(), vec![(7, 10)], "granted with its TTL");
    assert_eq!(h.mvcc.lease(7).unwrap().keys, vec![KEY.as_bytes().to_vec()]);
    let kv = h.get(KEY).unwrap();
    assert_eq!(
        (kv.lease, kv.create_revision, kv.mod_revision, kv.version),
        (7, rev, rev, 1)
    );
    let i = stored(&h);
    assert_eq!(
        i.registered_at_ms, 42_000,
        "leader time, not the proposer's"
    );
    assert_eq!(
        Instance {
            registered_at_ms: 0,
            ..i
        },
        instance(),
        "otherwise the proposed instance"
    );
    // The grant has no event (as in etcd); the put has one.
    let events = &h.events[events_before..];
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0].kind,
            events[0].kv.key.as_slice(),
            events[0].kv.mod_revision
        ),
        (EventKind::Put, KEY.as_bytes(), rev)
    );
    // Revoking the lease takes the instance with it.
    h.apply(Command::LeaseRevoke { id: 7 });
    assert!(h.get(KEY).is_none());
}

#[test]
fn a_repeat_with_the_request_id_replays_the_first_answer() {
    let mut h = H::new();
    let rev = h.rev() + 1;
    let cmd = once(
        "reg-1",
        register(InstanceLease::Grant {
            id: 7,
            ttl_secs: 10,
        }),
    );
    let first = h.apply_at(1_000, cmd.clone());
    // The retry arrives in a later entry, with a later leader time: still the same command.
    let again = h.apply_at(2_000, cmd);
    assert_eq!(again, first);
    assert_eq!((first.revision, h.rev()), (rev, rev), "applied once");
    assert_eq!(h.mvcc.lease_ttls(), vec![(7, 10)], "one lease");
    assert_eq!(
        stored(&h).registered_at_ms,
        1_000,
        "the first registration's time"
    );
}

#[test]
fn refused_registrations_change_nothing() {
    let mut h = H::new();
    h.grant(7, 5);
    let (rev, events_before) = (h.rev(), h.events.len());
    let taken = h.apply(register(InstanceLease::Grant { id: 7, ttl_secs: 9 }));
    assert_eq!(taken.result, Err(ApplyError::LeaseExists { id: 7 }));
    let zero = h.apply(register(InstanceLease::Grant { id: 0, ttl_secs: 9 }));
    assert_eq!(zero.result, Err(ApplyError::LeaseNotFound { id: 0 }));
    let gone = h.apply(register(InstanceLease::Attach(8)));
    assert_eq!(gone.result, Err(ApplyError::LeaseNotFound { id: 8 }));
    assert_eq!(h.rev(), rev);
    assert!(h.get(KEY).is_none());
    assert_eq!(
        h.mvcc.lease_ttls(),
        vec![(7, 5)],
        "TTL untouched, no new lease"
    );
    assert_eq!(h.events.len(), events_before);
}

#[test]
fn attach_and_persistent_put_one_key_each() {
    let mut h = H::new();
    h.grant(3, 5);
    let r = h.apply(register(InstanceLease::Attach(3)));
    let created = r.revision;
    assert_eq!(
        r.result,
        Ok(ResponseBody::Register {
            lease_id: 3,
            registered_at_ms: 1_000
        })
    );
    assert_eq!(h.mvcc.lease(3).unwrap().keys.len(), 1);
    // Registering again (persistent now) moves the key off the lease: a new version.
    let r = h.apply_at(5_000, register(InstanceLease::Persistent));
    assert_eq!(r.revision, created + 1);
    let kv = h.get(KEY).unwrap();
    assert_eq!((kv.lease, kv.version, kv.create_revision), (0, 2, created));
    assert!(h.mvcc.lease(3).unwrap().keys.is_empty());
    assert_eq!(stored(&h).registered_at_ms, 5_000);
    // The lease and its key survive a reopen (lease keys are rebuilt from the keys).
    h.apply(register(InstanceLease::Grant { id: 4, ttl_secs: 5 }));
    h.reopen();
    assert_eq!(h.mvcc.lease(4).unwrap().keys, vec![KEY.as_bytes().to_vec()]);
}
