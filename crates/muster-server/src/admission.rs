//! The client port's admission: a global bound on calls handled at once, and the client's
//! deadline made known to the write and read paths.
//!
//! [`AdmissionLayer`] wraps every service of the client port (`server.rs`). A call arriving
//! while `backpressure.max_concurrent_requests` calls are being handled is answered at once
//! with ResourceExhausted "etcdserver: too many requests" (mapped in `error.rs`), never queued.
//! A call holds its slot until its handler has produced the response: a unary call until it is
//! answered, a stream (Watch, LeaseKeepAlive, Registry Subscribe, Snapshot) only while it opens,
//! so long-lived streams neither count forever nor are refused because of their number. The
//! per-connection bound is tonic's own (`concurrency_limit_per_connection`, counted the same
//! way); past it a connection's calls wait for a slot of that connection.
//!
//! Deadlines: a client may send `grpc-timeout`. tonic's server drops the handler at that
//! deadline (its `GrpcTimeout` runs outside this layer), and this layer also makes it known to
//! the handler's task, so [`request_deadline`] bounds the routing loop, forwards and read
//! barriers by min(`leader_wait`, the client's deadline): work done for a request stops when
//! the request does (queued work its caller left is discarded, see `propose.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tonic::codegen::http;
use tonic::codegen::Service;

use crate::error::{RaftPathError, ServerError};

tokio::task_local! {
    /// When the client wants its answer by; set only around a client-port handler.
    static CLIENT_DEADLINE: Instant;
}

/// The deadline the client of the request handled on this task sent (`grpc-timeout`), if any.
pub fn client_deadline() -> Option<Instant> {
    CLIENT_DEADLINE.try_with(|d| *d).ok()
}

/// When the request handled on this task must be given up: `wait` from now, or the client's
/// own deadline when that is earlier.
pub fn request_deadline(wait: Duration) -> Instant {
    let bound = Instant::now() + wait;
    client_deadline().map_or(bound, |d| d.min(bound))
}

/// Runs `f` as if handling a request whose client sent `deadline` (tests, other doors).
pub async fn with_client_deadline<F: Future>(deadline: Instant, f: F) -> F::Output {
    CLIENT_DEADLINE.scope(deadline, f).await
}

/// The most digits a `grpc-timeout` value may have (gRPC over HTTP/2).
const GRPC_TIMEOUT_MAX_DIGITS: usize = 8;

/// Parses a `grpc-timeout` header value: 1–8 ASCII digits and a unit (H, M, S, m, u, n).
/// Malformed values are ignored, as tonic's own server does.
pub(crate) fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (unit, digits) = v.split_last()?;
    if digits.is_empty()
        || digits.len() > GRPC_TIMEOUT_MAX_DIGITS
        || !digits.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The client port's global bound on calls handled at once, shared by every connection.
pub struct ClientPermits {
    permits: Arc<Semaphore>,
    max: usize,
    /// Calls refused because the bound was reached.
    pub refused: AtomicU64,
}

impl ClientPermits {
    pub fn new(max: usize) -> ClientPermits {
        ClientPermits {
            permits: Arc::new(Semaphore::new(max)),
            max,
            refused: AtomicU64::new(0),
        }
    }

    /// Calls being handled now.
    pub fn in_use(&self) -> usize {
        self.max.saturating_sub(self.permits.available_permits())
    }
}

/// Wraps the client port's services in [`Admission`].
#[derive(Clone)]
pub struct AdmissionLayer {
    permits: Arc<ClientPermits>,
}

impl AdmissionLayer {
    pub fn new(permits: Arc<ClientPermits>) -> AdmissionLayer {
        AdmissionLayer { permits }
    }
}

impl<S> tower_layer::Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Admission<S> {
        Admission {
            inner,
            permits: self.permits.clone(),
        }
    }
}

/// See the module doc.
#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    permits: Arc<ClientPermits>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for Admission<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let Ok(permit) = self.permits.permits.clone().try_acquire_owned() else {
            self.permits.refused.fetch_add(1, Ordering::Relaxed);
            // A complete gRPC answer (trailers-only), so the client reads a status, not a
            // broken stream.
            let status = tonic::Status::from(ServerError::from(RaftPathError::TooManyRequests));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        let deadline = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| parse_grpc_timeout(v.as_bytes()))
            .map(|t| Instant::now() + t);
        let handled = self.inner.call(req);
        Box::pin(async move {
            let mut r = match deadline {
                Some(d) => CLIENT_DEADLINE.scope(d, handled).await,
                None => handled.await,
            };
            drop(permit);
            if let Ok(resp) = &mut r {
                as_grpc_go_size_error(resp.headers_mut());
            }
            r
        })
    }
}

/// tonic refuses a request over the message limit with OutOfRange "Error, decoded message
/// length too large: found N bytes, the limit is: M bytes"; etcd's server (grpc-go) with
/// ResourceExhausted "grpc: received message larger than max (N vs. M)", and etcd clients
/// expect that. Rewrites the former into the latter (tonic sends it trailers-only: the
/// status is in the response headers).
fn as_grpc_go_size_error(headers: &mut http::HeaderMap) {
    const TONIC_PREFIX: &str = "Error, decoded message length too large: found ";
    // Cheap test first: this runs on every answer of the client port.
    if headers
        .get("grpc-status")
        .is_none_or(|v| v.as_bytes() != b"11")
    {
        return;
    }
    let Some(status) = tonic::Status::from_header_map(headers) else {
        return;
    };
    let Some(rest) = status.message().strip_prefix(TONIC_PREFIX) else {
        return;
    };
    let numbers: Vec<&str> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|n| !n.is_empty())
        .collect();
    let message = match numbers.as_slice() {
        [found, limit] => format!("grpc: received message larger than max ({found} vs. {limit})"),
        _ => "grpc: received message larger than max".to_string(),
    };
    let _ = tonic::Status::resource_exhausted(message).add_header(headers);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeouts() {
        assert_eq!(parse_grpc_timeout(b"5S"), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_grpc_timeout(b"250m"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_grpc_timeout(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout(b"3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            parse_grpc_timeout(b"99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in [&b""[..], b"S", b"5", b"5s", b"123456789S", b"-1S", b"1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn tonics_size_error_becomes_grpc_gos() {
        let headers_of = |status: tonic::Status| {
            let mut h = http::HeaderMap::new();
            status.add_header(&mut h).expect("valid status");
            h
        };
        let mut h = headers_of(tonic::Status::out_of_range(
            "Error, decoded message length too large: found 2097165 bytes, the limit is: 2097152 bytes",
        ));
        as_grpc_go_size_error(&mut h);
        let s = tonic::Status::from_header_map(&h).expect("a status");
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            s.message(),
            "grpc: received message larger than max (2097165 vs. 2097152)"
        );
        // Any other status is left alone.
        let mut h = headers_of(tonic::Status::out_of_range(
            "etcdserver: mvcc: required revision is a future revision",
        ));
        let before = h.clone();
        as_grpc_go_size_error(&mut h);
        assert_eq!(h, before);
    }

    #[tokio::test]
    async fn the_deadline_is_the_earlier_one() {
        let wait = Duration::from_secs(5);
        assert!(client_deadline().is_none());
        let soon = Instant::now() + Duration::from_millis(100);
        let d = with_client_deadline(soon, async { request_deadline(wait) }).await;
        assert_eq!(d, soon);
        let late = Instant::now() + Duration::from_secs(60);
        let d = with_client_deadline(late, async { request_deadline(wait) }).await;
        assert!(d < late && d <= Instant::now() + wait);
    }
}
