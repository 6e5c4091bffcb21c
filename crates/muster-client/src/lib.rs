//! The Rust client for Muster: the etcd v3 API (KV, leases, watch, cluster) and Muster's
//! service registry, with leader tracking, one retry loop, per-endpoint circuit breakers,
//! resumable watches, self-registration, a discovery cache and load balancers.
//!
//! ```no_run
//! use std::time::Duration;
//! use muster_client::{balancer::SmoothWeighted, Client, ClientOptions, InstanceSpec, ServiceName};
//!
//! # async fn f() -> Result<(), muster_client::ClientError> {
//! let client = Client::connect(["127.0.0.1:2379"], ClientOptions::default()).await?;
//!
//! // KV
//! client.put("config/a", "1").await?;
//! let r = client.get("config/a").await?;
//! assert_eq!(r.kvs[0].value, b"1");
//!
//! // A service registers itself and stays registered.
//! let me = InstanceSpec { service: "orders".into(), address: "10.0.0.7".into(), port: 8080, ..Default::default() };
//! let registration = client.register_self(me, Duration::from_secs(10)).await?;
//!
//! // A caller discovers it and balances over the instances.
//! let service = ServiceName::new("", "", "orders")
//!     .map_err(|e| muster_client::ClientError::InvalidArgument { message: e.to_string() })?;
//! let cache = client.discovery_cache(service);
//! cache.wait_synced(Duration::from_secs(5)).await?;
//! let lb = cache.balanced(SmoothWeighted::new());
//! if let Some(picked) = lb.pick(None) {
//!     println!("calling {}", picked.instance().addr());
//! }
//! registration.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Retries and exactly-once
//!
//! Every call goes through one retry loop (`retry.rs`). An error that proves the request was
//! not applied (not leader, no leader, connection refused, every breaker open) is always
//! retried. After an error that leaves the outcome unknown (connection lost mid-call, attempt
//! timeout, "commit status unknown") a call is repeated only when that is safe:
//!
//! | calls | after an unknown outcome | guarantee |
//! |---|---|---|
//! | reads: get/range, read-only txn, lease TTL/list, keep-alive, discover, list services, members, watch (re)open | repeated | — |
//! | `lease_grant`, `lease_revoke`, `put`, `delete`, `txn`, `compact`, `register`, `deregister` | repeated with the same request id, which the server de-duplicates | **exactly once** |
//! | `update_instance` | repeated if `ClientOptions::retry_overwrites` (default) | at least once (a read-modify-CAS that sets fields; repeating it sets the same values) |
//!
//! Every write sends `x-muster-request-id` (the same id on every attempt of one call); the
//! server's applier remembers ids for a bounded time and answers a repeat with the first result.
//!
//! # Layout
//! - [`client`]: [`Client`] — construction, shared state, request ids.
//! - [`options`]: [`ClientOptions`], [`RetryPolicy`], [`BreakerConfig`].
//! - [`error`]: [`ClientError`], parsed from gRPC statuses; `is_retryable` / `outcome_unknown`.
//! - [`endpoints`]: channels per endpoint, leader hint, routing.
//! - [`breaker`]: the per-endpoint circuit breaker.
//! - [`retry`]: the one retry loop (backoff with full jitter, deadline, request ids).
//! - [`kv`], [`txn`]: KV reads and writes, the transaction builder.
//! - [`lease`]: leases and the [`KeepAlive`] handle.
//! - [`watch`]: [`WatchStream`], resumed across node failures.
//! - [`cluster`]: members, endpoint status, leader discovery.
//! - [`registry`]: register, discover, subscribe.
//! - [`register_self`]: the [`SelfRegistration`] handle.
//! - [`discovery`]: [`DiscoveryCache`] and [`Balanced`].
//! - [`balancer`]: round robin, smooth weighted, least outstanding, consistent hash, P2C.

pub mod balancer;
pub mod breaker;
pub mod client;
pub mod cluster;
pub mod discovery;
pub mod endpoints;
pub mod error;
pub mod kv;
pub mod lease;
pub mod options;
pub mod register_self;
pub mod registry;
pub mod retry;
pub mod txn;
pub mod watch;

pub use client::Client;
pub use cluster::{EndpointStatus, Member};
pub use discovery::{Balanced, DiscoveryCache};
pub use error::ClientError;
pub use kv::{
    DeleteOptions, DeleteResponse, GetOptions, GetResponse, PutOptions, PutResponse, SortOrder,
    SortTarget,
};
pub use lease::{KeepAlive, KeepAliveState, LeaseGrant, LeaseTimeToLive};
pub use muster_proto::mvccpb::KeyValue;
pub use options::{BreakerConfig, ClientOptions, RetryPolicy, TlsOptions};
pub use register_self::{SelfRegistration, SelfState};
pub use registry::{
    DiscoverQuery, Instance, InstanceKey, InstanceRecord, InstanceSpec, Registration, ServiceEvent,
    ServiceName, ServiceSummary, Subscription,
};
pub use txn::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse, TxnResponse};
pub use watch::{EventKind, WatchEvent, WatchOptions, WatchStream, WatchUpdate};

/// The generated wire types, for what the typed API does not cover.
pub use muster_proto as proto;
