//! [`ClientError`]: every failure the client reports, parsed back from gRPC statuses into
//! typed variants (the server maps its errors to statuses in one place,
//! `muster-server/src/error.rs`; this is the inverse).
//!
//! Two questions decide what the retry loop does with an error:
//! - [`ClientError::is_retryable`]: the request surely did **not** take effect (the node was
//!   not the leader, no leader was known, the connection could not be made) — any request may
//!   be sent again.
//! - [`ClientError::outcome_unknown`]: the request may or may not have been applied (the
//!   connection broke mid-call, the attempt timed out, the leader changed before commit). Only
//!   calls that are safe to repeat are retried after such an error (see `retry.rs`).

use std::time::Duration;

use tonic::Code;

/// Metadata key on an Unavailable status naming the leader's address (set by the server).
pub const LEADER_HEADER: &str = "x-muster-leader";

/// Everything a client call can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The node is not the leader; `leader` is its hint (host:port), when it knew one.
    /// Not applied: safe to retry.
    #[error("not leader (leader: {})", leader.as_deref().unwrap_or("unknown"))]
    NotLeader { leader: Option<String> },
    /// No leader is known (an election is under way). Not applied: safe to retry.
    #[error("no leader")]
    NoLeader,
    /// The connection to `endpoint` could not be made; the request was not sent.
    #[error("endpoint {endpoint} unreachable: {reason}")]
    Unreachable { endpoint: String, reason: String },
    /// Every endpoint's circuit breaker is open. Nothing was sent.
    #[error("no endpoint available (every circuit breaker is open)")]
    NoEndpointAvailable,
    /// The leader changed or could not be reached after the request was sent: it may have
    /// been applied.
    #[error("outcome unknown: {message}")]
    OutcomeUnknown { message: String },
    /// The connection to `endpoint` broke during the call: it may have been applied.
    #[error("connection to {endpoint} lost: {reason}")]
    ConnectionLost { endpoint: String, reason: String },
    /// One attempt on `endpoint` took longer than the attempt timeout: it may have been applied.
    #[error("attempt on {endpoint} timed out after {after:?}")]
    AttemptTimeout { endpoint: String, after: Duration },
    /// The call's deadline passed after `attempts` attempts; `last` is the last attempt's
    /// error; `maybe_applied` says whether any attempt may have taken effect.
    #[error("deadline exceeded after {attempts} attempts (last error: {last})")]
    DeadlineExceeded {
        attempts: u32,
        maybe_applied: bool,
        last: Box<ClientError>,
    },
    /// The request was rejected as malformed.
    #[error("invalid argument: {message}")]
    InvalidArgument { message: String },
    /// The named lease does not exist (never granted, revoked or expired).
    #[error("lease {id:#x} not found")]
    LeaseNotFound { id: i64 },
    /// A lease with this id already exists.
    #[error("lease already exists")]
    LeaseExists,
    /// Something else that was asked for does not exist.
    #[error("not found: {message}")]
    NotFound { message: String },
    /// The revision asked for was compacted; `compact_revision` when the server said which.
    #[error("revision compacted{}", compact_revision.map(|r| format!(" (compacted up to {r})")).unwrap_or_default())]
    Compacted { compact_revision: Option<i64> },
    /// The revision asked for is in the future.
    #[error("revision is in the future")]
    FutureRevision,
    /// A request id was reused for a different request (a client bug).
    #[error("request id reused for a different request: {message}")]
    RequestIdReused { message: String },
    /// A conflicting concurrent change made the server give up.
    #[error("conflict: {message}")]
    Conflict { message: String },
    /// Out of range (for example a lease TTL above the maximum).
    #[error("out of range: {message}")]
    OutOfRange { message: String },
    /// The server does not implement this.
    #[error("unsupported by the server: {message}")]
    Unsupported { message: String },
    /// The request exceeded a server limit.
    #[error("resource exhausted: {message}")]
    ResourceExhausted { message: String },
    /// The server failed internally.
    #[error("server error: {message}")]
    Internal { message: String },
    /// Any other status.
    #[error("{code:?}: {message}")]
    Status { code: Code, message: String },
    /// An endpoint string could not be parsed.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    /// The server's reply lacked something it must carry, or carried something unparseable.
    #[error("invalid response: {what}")]
    InvalidResponse { what: String },
    /// A watch was cancelled by the server.
    #[error("watch cancelled by the server: {reason}")]
    WatchCanceled { reason: String },
    /// The client (or the handle used) was shut down.
    #[error("client shut down")]
    Closed,
}

impl ClientError {
    /// Whether the request surely did not take effect, so any request, even a non-idempotent
    /// write, may be sent again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::NotLeader { .. }
                | ClientError::NoLeader
                | ClientError::Unreachable { .. }
                | ClientError::NoEndpointAvailable
        )
    }

    /// Whether the request may or may not have been applied. Repeating it is safe only for
    /// reads, requests the server de-duplicates by request id, and overwrites.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            ClientError::OutcomeUnknown { .. }
            | ClientError::ConnectionLost { .. }
            | ClientError::AttemptTimeout { .. } => true,
            ClientError::DeadlineExceeded { maybe_applied, .. } => *maybe_applied,
            _ => false,
        }
    }

    /// Whether the endpoint that answered is alive (an answer came back, even an error);
    /// drives the circuit breaker.
    pub(crate) fn endpoint_failed(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. }
                | ClientError::ConnectionLost { .. }
                | ClientError::AttemptTimeout { .. }
        )
    }

    /// Whether this is a "not found" kind of answer (CLI exit code 3).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            ClientError::LeaseNotFound { .. } | ClientError::NotFound { .. }
        )
    }

    /// Parses a status returned by a call to `endpoint`.
    pub fn from_status(endpoint: &str, s: &tonic::Status) -> ClientError {
        let message = s.message().to_string();
        let has = |needle: &str| message.contains(needle);
        match s.code() {
            Code::Unavailable => {
                if let Some(leader) = s.metadata().get(LEADER_HEADER) {
                    if let Ok(addr) = leader.to_str() {
                        return ClientError::NotLeader {
                            leader: Some(addr.to_string()),
                        };
                    }
                }
                if has("etcdserver: not leader") {
                    ClientError::NotLeader { leader: None }
                } else if has("etcdserver: no leader") {
                    ClientError::NoLeader
                } else if has("etcdserver:") || has("raft") {
                    // commit status unknown, leader unreachable (after a forward), timed out.
                    ClientError::OutcomeUnknown { message }
                } else {
                    transport(endpoint, s)
                }
            }
            Code::Unknown | Code::Cancelled if is_transport(s) => ClientError::ConnectionLost {
                endpoint: endpoint.to_string(),
                reason: error_chain(s),
            },
            Code::DeadlineExceeded => ClientError::OutcomeUnknown { message },
            Code::InvalidArgument if has("request id") => ClientError::RequestIdReused { message },
            Code::InvalidArgument => ClientError::InvalidArgument { message },
            Code::NotFound if has("lease not found") => ClientError::LeaseNotFound { id: 0 },
            Code::NotFound => ClientError::NotFound { message },
            Code::FailedPrecondition if has("lease already exists") => ClientError::LeaseExists,
            Code::OutOfRange if has("has been compacted") => ClientError::Compacted {
                compact_revision: None,
            },
            Code::OutOfRange if has("future revision") => ClientError::FutureRevision,
            Code::OutOfRange => ClientError::OutOfRange { message },
            Code::Aborted => ClientError::Conflict { message },
            Code::Unimplemented => ClientError::Unsupported { message },
            Code::ResourceExhausted => ClientError::ResourceExhausted { message },
            Code::Internal => ClientError::Internal { message },
            code => ClientError::Status { code, message },
        }
    }

    /// Fills in the lease id of a [`ClientError::LeaseNotFound`] parsed from a status.
    pub(crate) fn with_lease(self, id: i64) -> ClientError {
        match self {
            ClientError::LeaseNotFound { .. } => ClientError::LeaseNotFound { id },
            other => other,
        }
    }
}

/// The status's message with its source chain (tonic puts transport details in sources).
fn error_chain(s: &tonic::Status) -> String {
    let mut out = s.message().to_string();
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(e) = src {
        let t = e.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        src = e.source();
    }
    out
}

/// Whether the status came from the client's transport rather than from a server handler.
fn is_transport(s: &tonic::Status) -> bool {
    std::error::Error::source(s).is_some()
        || [
            "transport error",
            "h2 protocol error",
            "connection",
            "broken pipe",
        ]
        .iter()
        .any(|m| s.message().contains(m))
}

/// Classifies a transport-level Unavailable: a failure to connect means the request was never
/// sent; anything else (a connection that broke) leaves the outcome unknown.
fn transport(endpoint: &str, s: &tonic::Status) -> ClientError {
    let reason = error_chain(s);
    let mut never_sent = false;
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(e) = src {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            never_sent |= matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::AddrNotAvailable
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
            );
        }
        src = e.source();
    }
    let lower = reason.to_ascii_lowercase();
    never_sent |= [
        "tcp connect error",
        "error trying to connect",
        "connection refused",
    ]
    .iter()
    .any(|m| lower.contains(m));
    if never_sent {
        ClientError::Unreachable {
            endpoint: endpoint.to_string(),
            reason,
        }
    } else {
        ClientError::ConnectionLost {
            endpoint: endpoint.to_string(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(code: Code, msg: &str) -> ClientError {
        ClientError::from_status("h:1", &tonic::Status::new(code, msg))
    }

    #[test]
    fn server_statuses_parse_into_typed_errors() {
        let mut s = tonic::Status::unavailable("etcdserver: not leader (leader: Some(2))");
        s.metadata_mut()
            .insert(LEADER_HEADER, "10.0.0.2:2379".parse().expect("ascii"));
        let e = ClientError::from_status("h:1", &s);
        assert_eq!(
            e,
            ClientError::NotLeader {
                leader: Some("10.0.0.2:2379".into())
            }
        );
        assert!(e.is_retryable() && !e.outcome_unknown());
        assert_eq!(
            parse(Code::Unavailable, "etcdserver: no leader"),
            ClientError::NoLeader
        );
        let unknown = parse(
            Code::Unavailable,
            "etcdserver: leader changed, commit status unknown",
        );
        assert!(unknown.outcome_unknown() && !unknown.is_retryable());
        assert!(parse(
            Code::Unavailable,
            "etcdserver: leader 1.2.3.4:5 unreachable: x"
        )
        .outcome_unknown());
        assert_eq!(
            parse(Code::NotFound, "etcdserver: requested lease not found").with_lease(7),
            ClientError::LeaseNotFound { id: 7 }
        );
        assert_eq!(
            parse(
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted"
            ),
            ClientError::Compacted {
                compact_revision: None
            }
        );
        assert!(matches!(
            parse(
                Code::InvalidArgument,
                "etcdserver: request id \"a\" was already used by a different request"
            ),
            ClientError::RequestIdReused { .. }
        ));
        assert!(matches!(
            parse(Code::InvalidArgument, "etcdserver: key is not provided"),
            ClientError::InvalidArgument { .. }
        ));
        assert!(!parse(Code::Internal, "boom").is_retryable());
    }

    #[test]
    fn transport_failures_split_into_never_sent_and_unknown() {
        let refused = parse(
            Code::Unavailable,
            "error trying to connect: tcp connect error: Connection refused (os error 111)",
        );
        assert!(matches!(refused, ClientError::Unreachable { .. }));
        assert!(refused.is_retryable() && refused.endpoint_failed());
        let broken = parse(Code::Unavailable, "transport error");
        assert!(matches!(broken, ClientError::ConnectionLost { .. }));
        assert!(broken.outcome_unknown() && !broken.is_retryable());
    }

    #[test]
    fn deadline_keeps_whether_an_attempt_may_have_applied() {
        let e = ClientError::DeadlineExceeded {
            attempts: 3,
            maybe_applied: true,
            last: Box::new(ClientError::NoLeader),
        };
        assert!(e.outcome_unknown() && !e.is_retryable());
    }
}
