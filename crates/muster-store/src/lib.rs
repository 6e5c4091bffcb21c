//! Muster's storage: the MVCC keyspace and leases on sled, and the openraft log store and state
//! machine around them.
//!
//! Layout:
//! - [`error`]: [`error::StoreError`], storage failures (fatal to the node).
//! - [`mvcc`]: the MVCC keyspace, leases and the applier — the only code that changes state.
//! - [`raft`]: openraft's storage side: type config, segment-file log store, state
//!   machine.
//! - [`watch`]: the watch hub: fans applied events out to watchers (live queue or catch-up
//!   from history), with etcd's watch guarantees.

pub mod error;
pub mod mvcc;
pub mod raft;
pub mod watch;
