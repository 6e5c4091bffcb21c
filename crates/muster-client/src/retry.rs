//! The client's one retry loop. Every RPC — unary calls, and the opening of watch and
//! keep-alive streams — goes through `Client::call` (crate-private); nothing else retries.
//!
//! Per logical call:
//! - **Deadline**: `call_timeout` (or the call's own) across all attempts; each attempt is
//!   also cut at `attempt_timeout`, so a black-holed node costs one attempt, not the call.
//! - **Routing**: [`Target`] picks the leader for writes; an endpoint that failed is avoided
//!   on the next attempt; breakers skip dead endpoints (see `endpoints.rs`).
//! - **What is retried**: errors for which [`ClientError::is_retryable`] holds (surely not
//!   applied) always; errors with an unknown outcome only when the call's [`Safety`] allows.
//! - **Backoff**: full jitter, `sleep = uniform(0, min(max, base · 2^(n-1)))`; a NotLeader
//!   with a leader hint is followed at once (once in a row), as it is pure routing.
//! - **Request ids**: a write gets one id (`x-muster-request-id`) for all its attempts, so a
//!   server that de-duplicates it applies the write once however often it is retried.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::time::{timeout, Instant};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::client::Client;
use crate::endpoints::{EndpointState, Target};
use crate::error::ClientError;

/// Metadata naming one logical request, the same on each of its retries.
pub const REQUEST_ID_HEADER: &str = "x-muster-request-id";

/// What repeating a call after an unknown outcome would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Safety {
    /// No effect (reads, keep-alives): always repeatable.
    Read,
    /// The server de-duplicates the request id: repeating returns the first answer, so the
    /// call is applied exactly once.
    Deduped,
    /// Applying twice leaves the same state (but bumps versions and emits a second event):
    /// repeated when `ClientOptions::retry_overwrites` is set (at-least-once).
    Overwrite,
    /// Repeating could change the result (a compare-and-swap txn): never repeated after an
    /// unknown outcome; the caller gets the outcome-unknown error.
    Unsafe,
}

/// How one logical call is made.
#[derive(Debug, Clone)]
pub struct CallSpec {
    /// For logs.
    pub name: &'static str,
    pub target: Target,
    pub safety: Safety,
    /// Whether attempts carry a request id (every write does).
    pub request_id: bool,
    /// A deadline other than `call_timeout`.
    pub timeout: Option<Duration>,
    /// An endpoint to avoid on the first attempt (a stream's node that just died).
    pub avoid: Option<String>,
}

impl CallSpec {
    /// A read (repeatable, any endpoint).
    pub fn read(name: &'static str) -> Self {
        CallSpec {
            name,
            target: Target::Any,
            safety: Safety::Read,
            request_id: false,
            timeout: None,
            avoid: None,
        }
    }

    /// A write with request id, to the leader.
    pub fn write(name: &'static str, safety: Safety) -> Self {
        CallSpec {
            name,
            target: Target::Leader,
            safety,
            request_id: true,
            timeout: None,
            avoid: None,
        }
    }
}

/// One attempt: the channel to use and the request id to send.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub channel: Channel,
    pub endpoint: Arc<EndpointState>,
    pub request_id: Option<Arc<str>>,
    /// 1 for the first attempt.
    pub number: u32,
}

impl Attempt {
    /// Wraps `msg` in a request carrying the call's request id.
    pub fn request<M>(&self, msg: M) -> tonic::Request<M> {
        let mut r = tonic::Request::new(msg);
        if let Some(id) = &self.request_id {
            if let Ok(v) = MetadataValue::try_from(id.as_ref()) {
                r.metadata_mut().insert(REQUEST_ID_HEADER, v);
            }
        }
        r
    }

    /// Parses a status this attempt got.
    pub fn status(&self, s: tonic::Status) -> ClientError {
        ClientError::from_status(&self.endpoint.authority, &s)
    }
}

/// Reports an abandoned attempt (its future was dropped) to the breaker.
struct Pending<'a> {
    client: &'a Client,
    endpoint: Arc<EndpointState>,
    done: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.client.endpoints().report(&self.endpoint, None);
        }
    }
}

impl Client {
    /// The retry loop. `f` makes one attempt; its errors decide whether there is another.
    ///
    /// # Errors
    /// The first error that may not be retried, or [`ClientError::DeadlineExceeded`].
    pub(crate) async fn call<T, F, Fut>(&self, spec: CallSpec, mut f: F) -> Result<T, ClientError>
    where
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let opts = self.options();
        let deadline = Instant::now() + spec.timeout.unwrap_or(opts.call_timeout);
        let request_id: Option<Arc<str>> = spec.request_id.then(|| self.next_request_id().into());
        let mut avoid = spec.avoid.clone();
        let mut maybe_applied = false;
        let mut followed_hint = false;
        let mut last_cause: Option<ClientError> = None;
        let mut number = 0u32;
        loop {
            number += 1;
            let now = Instant::now();
            let err = match self.endpoints().acquire(spec.target, avoid.as_deref(), now) {
                Err(e) => e,
                Ok(endpoint) => {
                    let per = opts
                        .attempt_timeout
                        .min(deadline.saturating_duration_since(now));
                    let mut pending = Pending {
                        client: self,
                        endpoint: endpoint.clone(),
                        done: false,
                    };
                    let attempt = Attempt {
                        channel: endpoint.channel.clone(),
                        endpoint: endpoint.clone(),
                        request_id: request_id.clone(),
                        number,
                    };
                    let r = match timeout(per, f(attempt)).await {
                        Ok(r) => r,
                        Err(_) => Err(ClientError::AttemptTimeout {
                            endpoint: endpoint.authority.clone(),
                            after: per,
                        }),
                    };
                    pending.done = true;
                    self.endpoints()
                        .report(&endpoint, Some(&r.as_ref().map(|_| ())));
                    match r {
                        Ok(v) => return Ok(v),
                        Err(e) => {
                            if e.endpoint_failed() {
                                avoid = Some(endpoint.authority.clone());
                            }
                            e
                        }
                    }
                }
            };
            maybe_applied |= err.outcome_unknown();
            if err != ClientError::NoEndpointAvailable {
                last_cause = Some(err.clone());
            }
            self.learn(&err, spec.target);
            let repeat =
                err.is_retryable() || (err.outcome_unknown() && self.repeatable(spec.safety));
            tracing::debug!(call = spec.name, attempt = number, repeat, error = %err, "attempt failed");
            if !repeat {
                return Err(err);
            }
            self.stats().record_retry(err.outcome_unknown());
            let hint = matches!(err, ClientError::NotLeader { leader: Some(_) });
            let pause = if hint && !followed_hint {
                Duration::ZERO
            } else {
                self.backoff(number)
            };
            followed_hint = hint && pause.is_zero();
            let now = Instant::now();
            if now + pause >= deadline {
                tokio::time::sleep_until(deadline).await;
                // "Every breaker open" says less than the failure that opened them.
                let last = match err {
                    ClientError::NoEndpointAvailable => last_cause.unwrap_or(err),
                    e => e,
                };
                return Err(ClientError::DeadlineExceeded {
                    attempts: number,
                    maybe_applied,
                    last: Box::new(last),
                });
            }
            tokio::time::sleep(pause).await;
        }
    }

    fn repeatable(&self, safety: Safety) -> bool {
        match safety {
            Safety::Read | Safety::Deduped => true,
            Safety::Overwrite => self.options().retry_overwrites,
            Safety::Unsafe => false,
        }
    }

    /// A full-jitter backoff before retry `n`.
    fn backoff(&self, n: u32) -> Duration {
        let cap = self.options().retry.cap(n);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.with_rng(|r| r.gen_range(0..=nanos)))
    }

    /// Updates leader knowledge from an attempt's error.
    fn learn(&self, err: &ClientError, target: Target) {
        match err {
            ClientError::NotLeader {
                leader: Some(leader),
            } => self.endpoints().set_leader(Some(leader)),
            ClientError::NotLeader { leader: None } | ClientError::NoLeader => {
                self.endpoints().set_leader(None);
                self.spawn_leader_refresh();
            }
            e if e.endpoint_failed() && target == Target::Leader => self.spawn_leader_refresh(),
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "retry_tests.rs"]
mod tests;
