//! [`ClientOptions`]: timeouts, the retry policy, circuit breakers and read routing. Plain
//! structs with `Default` and `validate()`; the client takes them as they are.

use std::time::Duration;

use crate::error::ClientError;

/// How the server remembers request ids (5 minutes of leader time): a call's deadline must end
/// well before, or a late retry could apply a second time.
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(240);

/// Client configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientOptions {
    /// Deadline of one logical call, across all its attempts (at most [`MAX_CALL_TIMEOUT`]).
    pub call_timeout: Duration,
    /// Longest a single attempt may take before it is abandoned (and the endpoint counted as
    /// failing). A dead node costs at most this per call.
    pub attempt_timeout: Duration,
    /// TCP connect timeout per endpoint.
    pub connect_timeout: Duration,
    /// Backoff between attempts.
    pub retry: RetryPolicy,
    /// Per-endpoint circuit breaker.
    pub breaker: BreakerConfig,
    /// Reads are serializable (served from any node's local replica, possibly stale) unless a
    /// call says otherwise. Default false: linearizable reads.
    pub serializable_reads: bool,
    /// Retry *overwrites* (Put, DeleteRange, registry Register/Deregister/Update) after an
    /// unknown outcome. They leave the same final state when applied twice, but a second
    /// apply bumps the key's version and emits a second watch event. Default true; false
    /// makes them fail with an outcome-unknown error instead.
    pub retry_overwrites: bool,
    /// Seed of the jitter RNG (tests); `None` seeds from the OS.
    pub seed: Option<u64>,
    /// How often a watch stream asks the server for progress; a stream that answers nothing
    /// within another interval is treated as dead and resumed elsewhere.
    pub watch_probe_interval: Duration,
    /// Look for the leader (Maintenance.Status + MemberList) in the background at start and
    /// whenever it is unknown. Off, the leader is learned only from NotLeader hints.
    pub discover_leader: bool,
    /// TLS to every endpoint (the cluster's client port speaks TLS); `None`: plaintext.
    pub tls: Option<TlsOptions>,
}

/// TLS to the cluster: whom to trust, and the client certificate if the cluster requires one
/// (`--client-cert-auth`).
#[derive(Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM of the CA certificates that sign the nodes' certificates.
    pub ca_pem: Vec<u8>,
    /// PEM of the client certificate chain and its private key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to verify every node's certificate for; `None`: each endpoint's host.
    pub domain: Option<String>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("TlsOptions")
            .field("identity", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl TlsOptions {
    /// Reads the PEM files: `ca` always, `cert` and `key` together.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] naming the file that cannot be read, or when only one
    /// of `cert` and `key` is given.
    pub fn from_files(
        ca: &std::path::Path,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> Result<TlsOptions, ClientError> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| ClientError::InvalidArgument {
                message: format!("reading {}: {e}", p.display()),
            })
        };
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            (None, None) => None,
            _ => {
                return Err(ClientError::InvalidArgument {
                    message: "a client certificate needs its key (--cert with --key)".into(),
                })
            }
        };
        Ok(TlsOptions {
            ca_pem: read(ca)?,
            identity,
            domain: None,
        })
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            call_timeout: Duration::from_secs(15),
            attempt_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            retry: RetryPolicy::default(),
            breaker: BreakerConfig::default(),
            serializable_reads: false,
            retry_overwrites: true,
            seed: None,
            watch_probe_interval: Duration::from_secs(5),
            discover_leader: true,
            tls: None,
        }
    }
}

impl ClientOptions {
    /// Checks the options for contradictions.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] naming the bad field.
    pub fn validate(&self) -> Result<(), ClientError> {
        let bad = |m: &str| {
            Err(ClientError::InvalidArgument {
                message: m.to_string(),
            })
        };
        if self.call_timeout.is_zero() || self.call_timeout > MAX_CALL_TIMEOUT {
            return bad("call_timeout must be > 0 and at most 240s (request-id retention)");
        }
        if self.attempt_timeout.is_zero() || self.connect_timeout.is_zero() {
            return bad("attempt_timeout and connect_timeout must be > 0");
        }
        if self.retry.base.is_zero() || self.retry.max < self.retry.base {
            return bad("retry.base must be > 0 and retry.max >= retry.base");
        }
        if self.breaker.failure_threshold == 0 || self.breaker.open_for.is_zero() {
            return bad("breaker.failure_threshold and breaker.open_for must be > 0");
        }
        if self.watch_probe_interval.is_zero() {
            return bad("watch_probe_interval must be > 0");
        }
        Ok(())
    }
}

/// Exponential backoff with full jitter: before retry `n` (1-based) the loop sleeps a uniform
/// random time in `[0, min(max, base · 2^(n-1))]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first backoff's upper bound.
    pub base: Duration,
    /// The largest backoff upper bound.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_millis(50),
            max: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// Upper bound of the backoff before retry `n` (1-based).
    pub fn cap(&self, n: u32) -> Duration {
        let factor = 1u32
            .checked_shl(n.saturating_sub(1).min(20))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// A per-endpoint circuit breaker: after `failure_threshold` consecutive transport failures
/// the endpoint is skipped for `open_for` (doubling per consecutive trip, up to
/// `max_open_for`); then one probe call is let through (half-open) and its outcome closes or
/// re-opens the breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open after its first trip.
    pub open_for: Duration,
    /// The longest open period.
    pub max_open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 2,
            open_for: Duration::from_millis(500),
            max_open_for: Duration::from_secs(10),
        }
    }
}
