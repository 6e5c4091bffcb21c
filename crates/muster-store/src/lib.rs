//! Muster's storage: the MVCC keyspace and leases on sled, and (soon) the openraft log store and
//! state machine around them.
//!
//! Layout:
//! - [`error`]: [`error::StoreError`], storage failures (fatal to the node).
//! - [`mvcc`]: the MVCC keyspace, leases and the applier — the only code that changes state.

pub mod error;
pub mod mvcc;
