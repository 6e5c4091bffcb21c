//! Muster's domain types: what the replicated log carries and what applying it returns.
//!
//! Layout:
//! - [`kv`]: revisions, key-values, events and key ranges (etcd v3 semantics).
//! - [`command`]: [`Command`], the replicated log's payload, and [`LogEntry`] (command + leader time).
//! - [`response`]: [`CommandResponse`], what applying a command returns.
//! - [`error`]: [`ApplyError`] (domain outcomes of apply) and [`ValidationError`] (bad requests).
//! - [`limits`]: request limits, explicit and documented.
//! - [`pb`]: conversions between the etcd wire messages and these types.
//! - [`registry`]: service instances, their keys in the keyspace, validation.
//! - [`pb_registry`]: conversions between the registry wire messages and [`registry`].

pub mod command;
pub mod error;
pub mod kv;
pub mod limits;
pub mod response;

pub use command::*;
pub use error::*;
pub use kv::*;
pub use limits::*;
pub use response::*;
pub mod pb;
pub mod pb_registry;
pub mod registry;
