//! Storage failures. Any of these means the node can no longer trust its disk (or its own
//! bookkeeping), so they are fatal: the caller stops the node loudly instead of answering.
//! Domain outcomes such as "lease not found" are not here; they are
//! [`muster_types::ApplyError`]s, returned as results of apply.

use std::sync::Arc;

/// A failure of the storage layer.
#[derive(thiserror::Error, Debug)]
pub enum StoreError {
    /// sled failed (I/O, or its own corruption checks).
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A stored value could not be encoded or decoded.
    #[error("cannot encode or decode {what}: {source}")]
    Codec {
        /// Which kind of stored value (e.g. "history record").
        what: &'static str,
        #[source]
        source: bincode::Error,
    },
    /// The stored data contradicts itself (a malformed key, a missing record the index points to,
    /// a key attached to a lease that does not exist, ...).
    #[error("corrupt store: {what}")]
    Corrupt {
        /// What is wrong, with the offending key or revision.
        what: String,
    },
    /// An earlier write of the Raft state machine failed: applied state may be missing from
    /// disk, so the state machine accepts nothing more (fail-stop) and Raft stops the node.
    #[error("state machine stopped after a failed write: {source}")]
    Stopped {
        /// The failure that stopped it (shared: every later call reports the same one).
        #[source]
        source: Arc<std::io::Error>,
    },
}
