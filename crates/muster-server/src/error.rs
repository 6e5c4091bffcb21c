//! The server's errors, and the one place they become gRPC statuses.

use muster_store::error::StoreError;
use muster_store::raft::{Member, TypeConfig};
use muster_types::{ApplyError, ValidationError};
use openraft::error::{ClientWriteError, ForwardToLeader, LinearizableReadError, RaftError};
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataValue;

/// Why a write (or a read barrier) could not be completed by the Raft layer. Serializable: a
/// leader returns it to a follower that forwarded the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum RaftPathError {
    /// `leader` is the leader's membership entry: its peer address routes forwards, its
    /// client address goes to clients as a hint.
    #[error("etcdserver: not leader (leader: {leader_id:?})")]
    NotLeader {
        leader_id: Option<u64>,
        leader: Option<Member>,
    },
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: leader changed, commit status unknown")]
    CommitUnknown,
    #[error("etcdserver: leader {addr} unreachable: {reason}")]
    LeaderUnreachable { addr: String, reason: String },
    #[error("etcdserver: request timed out")]
    Timeout,
    /// A bounded queue or the client port's concurrency bound is full (etcd's text: clients
    /// match on it). Nothing was proposed, so the request may be sent again after a back-off.
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("raft stopped: {reason}")]
    Fatal { reason: String },
    #[error("raft: {reason}")]
    Internal { reason: String },
    #[error("etcdserver: {reason}")]
    Rejected { reason: String },
    /// etcd's member errors, in its exact words (clientv3 maps them by text).
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: can only promote a learner member")]
    NotLearner,
    /// A forwarded command failed validation on the leader (its text is the validation
    /// error's).
    #[error("{reason}")]
    Invalid { reason: String },
}

// openraft's errors become ours here, and nowhere else.

impl From<ForwardToLeader<TypeConfig>> for RaftPathError {
    fn from(f: ForwardToLeader<TypeConfig>) -> Self {
        match f.leader_id {
            None => RaftPathError::NoLeader,
            Some(id) => RaftPathError::NotLeader {
                leader_id: Some(id),
                leader: f.leader_node,
            },
        }
    }
}

impl From<RaftError<TypeConfig, ClientWriteError<TypeConfig>>> for RaftPathError {
    fn from(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> Self {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => f.into(),
            // The entry was appended and then overwritten by a new leader's log, or the
            // leader stepped down before knowing: it may or may not be committed.
            RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => {
                RaftPathError::CommitUnknown
            }
            // Refused before appending: a membership change openraft does not allow now (one in
            // progress, a learner not caught up), or an unmet precondition.
            RaftError::APIError(e) => RaftPathError::Rejected {
                reason: e.to_string(),
            },
            RaftError::Fatal(f) => RaftPathError::Fatal {
                reason: f.to_string(),
            },
        }
    }
}

impl From<RaftError<TypeConfig, LinearizableReadError<TypeConfig>>> for RaftPathError {
    fn from(e: RaftError<TypeConfig, LinearizableReadError<TypeConfig>>) -> Self {
        match e {
            RaftError::APIError(LinearizableReadError::ForwardToLeader(f)) => f.into(),
            // Leadership not confirmed by a quorum in time: nothing was read.
            RaftError::APIError(LinearizableReadError::QuorumNotEnough(_)) => {
                RaftPathError::Timeout
            }
            RaftError::Fatal(f) => RaftPathError::Fatal {
                reason: f.to_string(),
            },
        }
    }
}

/// Every error a request handler can return.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Validation(#[from] ValidationError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Raft(#[from] RaftPathError),
    #[error("storage failure: {0}")]
    Storage(#[from] StoreError),
    /// Reading the state for a backup failed (the state machine stopped, or the disk).
    #[error("taking a backup: {0}")]
    Backup(std::io::Error),
    #[error("etcdserver: {what} is not supported")]
    Unsupported { what: &'static str },
    #[error("internal: apply returned an unexpected response to a {expected} request")]
    UnexpectedResponse { expected: &'static str },
    /// etcd's exact text: clients match on it.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge { ttl_secs: i64, max_secs: i64 },
    #[error("{what} not found")]
    NotFound { what: &'static str },
    #[error("conflict: {what}")]
    Conflict { what: &'static str },
    /// MoveLeader asked of a node that does not lead (etcd's text).
    #[error("etcdserver: not leader")]
    NotLeaderForMove,
    /// MoveLeader to a node that is not a voter of this cluster (etcd's text).
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
}

/// Metadata key carrying the leader's client address on a NotLeader status.
pub const LEADER_ADDR_HEADER: &str = "x-muster-leader";

impl From<ServerError> for tonic::Status {
    fn from(e: ServerError) -> Self {
        use tonic::Code;
        let msg = e.to_string();
        let code = match &e {
            ServerError::Validation(ValidationError::RequestTooLarge { size, limit }) => {
                // etcd's text carries no sizes (clients match it exactly): they go here.
                tracing::debug!(size, limit, "refused a request: too large");
                Code::InvalidArgument
            }
            ServerError::Validation(_) => Code::InvalidArgument,
            ServerError::NotFound { .. } => Code::NotFound,
            ServerError::Conflict { .. } => Code::Aborted,
            ServerError::NotLeaderForMove | ServerError::BadLeaderTransferee => {
                Code::FailedPrecondition
            }
            ServerError::Apply(a) => match a {
                ApplyError::LeaseNotFound { .. } => Code::NotFound,
                ApplyError::LeaseExists { .. } => Code::FailedPrecondition,
                ApplyError::KeyNotFound | ApplyError::RequestIdReused { .. } => {
                    Code::InvalidArgument
                }
                ApplyError::Compacted { .. } | ApplyError::FutureRevision { .. } => {
                    Code::OutOfRange
                }
                // etcd's codes for ErrGRPCNoSpace and ErrGRPCCorrupt.
                ApplyError::NoSpace => Code::ResourceExhausted,
                ApplyError::Corrupt => Code::DataLoss,
            },
            ServerError::Raft(r) => match r {
                RaftPathError::NotLeader { .. }
                | RaftPathError::NoLeader
                | RaftPathError::CommitUnknown
                | RaftPathError::LeaderUnreachable { .. }
                | RaftPathError::Timeout => Code::Unavailable,
                RaftPathError::TooManyRequests => Code::ResourceExhausted,
                RaftPathError::Rejected { .. }
                | RaftPathError::PeerUrlExists
                | RaftPathError::NotLearner => Code::FailedPrecondition,
                RaftPathError::MemberNotFound => Code::NotFound,
                RaftPathError::Invalid { .. } => Code::InvalidArgument,
                RaftPathError::Fatal { .. } | RaftPathError::Internal { .. } => Code::Internal,
            },
            ServerError::Storage(_)
            | ServerError::Backup(_)
            | ServerError::UnexpectedResponse { .. } => Code::Internal,
            ServerError::Unsupported { .. } => Code::Unimplemented,
            ServerError::LeaseTtlTooLarge { .. } => Code::OutOfRange,
        };
        let mut status = tonic::Status::new(code, msg);
        if let ServerError::Raft(RaftPathError::NotLeader {
            leader: Some(leader),
            ..
        }) = &e
        {
            // Not published yet: no hint rather than an empty one.
            if !leader.client_addr.is_empty() {
                if let Ok(v) = MetadataValue::try_from(leader.client_addr.as_str()) {
                    status.metadata_mut().insert(LEADER_ADDR_HEADER, v);
                }
            }
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_etcd_codes_and_messages() {
        let s: tonic::Status = ServerError::from(ValidationError::EmptyKey).into();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(s.message(), "etcdserver: key is not provided");
        let s: tonic::Status = ServerError::from(ApplyError::Compacted {
            compact_revision: 3,
        })
        .into();
        assert_eq!(s.code(), tonic::Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let s: tonic::Status = ServerError::from(ApplyError::LeaseNotFound { id: 7 }).into();
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert_eq!(s.message(), "etcdserver: requested lease not found");
        let s: tonic::Status = ServerError::from(RaftPathError::NotLeader {
            leader_id: Some(2),
            leader: Some(Member {
                addr: "h:2".into(),
                client_addr: "h:1".into(),
            }),
        })
        .into();
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert_eq!(
            s.metadata()
                .get(LEADER_ADDR_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some("h:1")
        );
        let s: tonic::Status = ServerError::from(RaftPathError::TooManyRequests).into();
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert_eq!(s.message(), "etcdserver: too many requests");
        let s: tonic::Status = ServerError::from(RaftPathError::Timeout).into();
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert_eq!(s.message(), "etcdserver: request timed out");
    }
}
