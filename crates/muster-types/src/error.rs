//! Errors of the domain layer: outcomes of apply and rejections of bad requests.

use serde::{Deserialize, Serialize};

/// A command that applied without changing anything because the request cannot be satisfied.
/// These are results of apply (deterministic on every node), not storage failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ApplyError {
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound { id: i64 },
    #[error("etcdserver: lease already exists")]
    LeaseExists { id: i64 },
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted { compact_revision: i64 },
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision { current_revision: i64 },
    /// An `Idempotent` command whose request id was already used by a different request.
    #[error("etcdserver: request id {request_id:?} was already used by a different request")]
    RequestIdReused { request_id: String },
    /// A NOSPACE alarm is raised (etcd's `ErrNoSpace`).
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// A CORRUPT alarm is raised (etcd's `ErrCorrupt`).
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
}

/// A request rejected before it reaches the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// etcd's exact text (clients match on it, e.g. clientv3's `ErrRequestTooLarge`); the
    /// sizes are for logs. Also a key over `max_key_bytes` (etcd bounds keys only by the
    /// request size, Muster's default).
    #[error("etcdserver: request is too large")]
    RequestTooLarge { size: usize, limit: usize },
    #[error("etcdserver: too many operations in txn request")]
    TooManyTxnOps { ops: usize, limit: usize },
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// etcd's text for a MemberAdd whose peer URLs cannot be used.
    #[error("etcdserver: given member URLs are invalid")]
    BadMemberUrls,
    #[error("etcdserver: {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
}
