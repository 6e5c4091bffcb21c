//! The endpoint set: one lazily connected tonic [`Channel`] per endpoint, each with its
//! circuit breaker, and the leader as far as the client knows it.
//!
//! - Leader knowledge comes from reply hints: the `x-muster-leader` metadata of a NotLeader
//!   status (recorded by the retry loop), and `Maintenance.Status` + `MemberList`
//!   (`Client::refresh_leader`, run in the background when the leader is unknown). An address
//!   the client was not configured with (a member it learned of) is added as a new endpoint.
//! - Writes go to the leader when it is known and its breaker lets them; otherwise, like reads,
//!   to the "current" endpoint — sticky, so one connection carries the traffic — moving on to
//!   the next one whose breaker allows when it fails. Any node accepts any request (followers
//!   forward writes one hop), so routing is an optimisation, never a correctness matter.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::breaker::{Breaker, BreakerState};
use crate::error::ClientError;
use crate::options::ClientOptions;

/// Leader discovery runs at most this often.
const REFRESH_EVERY: Duration = Duration::from_millis(300);

/// One endpoint: its address, channel and breaker.
#[derive(Debug)]
pub struct EndpointState {
    /// `host:port`, the form leader hints and member lists use.
    pub authority: String,
    pub channel: Channel,
    breaker: Mutex<Breaker>,
}

impl EndpointState {
    fn breaker(&self) -> MutexGuard<'_, Breaker> {
        // A poisoned breaker lock only means a panic elsewhere mid-update; the state is a
        // plain value and still usable.
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The breaker's current state.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker().state()
    }
}

/// Where a call should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The leader when known (writes), else any endpoint.
    Leader,
    /// Any endpoint (reads, streams).
    Any,
}

/// Normalises `e` (`host:port`, `http://host:port`, `https://host:port`, with or without a
/// trailing `/`) to its authority. Whether a client speaks TLS is its options' `tls`, for
/// every endpoint alike; the scheme is accepted as etcd clients write it.
///
/// # Errors
/// [`ClientError::InvalidEndpoint`] for anything that is not host:port.
pub fn authority(e: &str) -> Result<String, ClientError> {
    let bad = |reason: &str| ClientError::InvalidEndpoint {
        endpoint: e.to_string(),
        reason: reason.to_string(),
    };
    let e = e.trim();
    let a = e
        .strip_prefix("https://")
        .or_else(|| e.strip_prefix("http://"))
        .unwrap_or(e)
        .trim_end_matches('/');
    if a.is_empty() || a.contains('/') || !a.contains(':') {
        return Err(bad("expected host:port"));
    }
    Ok(a.to_string())
}

/// The endpoints of one client.
pub struct Endpoints {
    list: RwLock<Vec<Arc<EndpointState>>>,
    leader: RwLock<Option<String>>,
    cursor: AtomicUsize,
    options: ClientOptions,
    refreshing: AtomicBool,
    last_refresh: Mutex<Option<Instant>>,
}

impl Endpoints {
    /// Builds the set; channels connect on first use.
    ///
    /// # Errors
    /// [`ClientError::InvalidEndpoint`] for an unparseable endpoint or an empty list.
    pub fn new<S: AsRef<str>>(
        endpoints: impl IntoIterator<Item = S>,
        options: &ClientOptions,
    ) -> Result<Self, ClientError> {
        let set = Endpoints {
            list: RwLock::new(Vec::new()),
            leader: RwLock::new(None),
            cursor: AtomicUsize::new(0),
            options: options.clone(),
            refreshing: AtomicBool::new(false),
            last_refresh: Mutex::new(None),
        };
        for e in endpoints {
            let e = e.as_ref();
            if e.trim().starts_with("https://") && options.tls.is_none() {
                return Err(ClientError::InvalidEndpoint {
                    endpoint: e.to_string(),
                    reason: "https:// needs TLS options (ClientOptions::tls; the CLI's --cacert)"
                        .into(),
                });
            }
            set.get_or_add(&authority(e)?)?;
        }
        if set.all().is_empty() {
            return Err(ClientError::InvalidEndpoint {
                endpoint: String::new(),
                reason: "no endpoints given".into(),
            });
        }
        Ok(set)
    }

    fn channel(&self, authority: &str) -> Result<Channel, ClientError> {
        let invalid = |e: tonic::transport::Error| ClientError::InvalidEndpoint {
            endpoint: authority.to_string(),
            reason: e.to_string(),
        };
        let scheme = if self.options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{authority}")).map_err(invalid)?;
        if let Some(tls) = &self.options.tls {
            let mut config = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            if let Some(domain) = &tls.domain {
                config = config.domain_name(domain.clone());
            }
            ep = ep.tls_config(config).map_err(invalid)?;
        }
        Ok(ep
            .connect_timeout(self.options.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true)
            .connect_lazy())
    }

    /// The endpoint at `authority`, added when new.
    ///
    /// # Errors
    /// [`ClientError::InvalidEndpoint`] when `authority` is not a valid URI authority.
    pub fn get_or_add(&self, authority: &str) -> Result<Arc<EndpointState>, ClientError> {
        if let Some(e) = self.find(authority) {
            return Ok(e);
        }
        let mut list = self.list.write().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = list.iter().find(|e| e.authority == authority) {
            return Ok(e.clone());
        }
        let e = Arc::new(EndpointState {
            authority: authority.to_string(),
            channel: self.channel(authority)?,
            breaker: Mutex::new(Breaker::new(self.options.breaker.clone())),
        });
        list.push(e.clone());
        Ok(e)
    }

    fn find(&self, authority: &str) -> Option<Arc<EndpointState>> {
        self.list
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|e| e.authority == authority)
            .cloned()
    }

    /// Every endpoint, in the order they were added.
    pub fn all(&self) -> Vec<Arc<EndpointState>> {
        self.list.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The leader's address, when known.
    pub fn leader(&self) -> Option<String> {
        self.leader
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records a leader hint (`None` forgets the leader).
    pub fn set_leader(&self, authority: Option<&str>) {
        if let Some(a) = authority {
            if let Err(e) = self.get_or_add(a) {
                tracing::debug!(leader = a, "ignoring unusable leader hint: {e}");
                return;
            }
        }
        let mut l = self.leader.write().unwrap_or_else(|p| p.into_inner());
        if l.as_deref() != authority {
            tracing::debug!(leader = ?authority, "leader hint");
            *l = authority.map(str::to_string);
        }
    }

    /// Picks an endpoint for `target`, not `avoid` unless nothing else is available, and takes
    /// its breaker permit.
    ///
    /// # Errors
    /// [`ClientError::NoEndpointAvailable`] when every breaker is open.
    pub fn acquire(
        &self,
        target: Target,
        avoid: Option<&str>,
        now: Instant,
    ) -> Result<Arc<EndpointState>, ClientError> {
        if target == Target::Leader {
            if let Some(l) = self.leader().filter(|l| Some(l.as_str()) != avoid) {
                if let Some(e) = self.find(&l) {
                    if e.breaker().acquire(now) {
                        return Ok(e);
                    }
                }
            }
        }
        let list = self.all();
        let n = list.len();
        let start = self.cursor.load(Ordering::Relaxed);
        let order = (0..n).map(|i| (start + i) % n);
        let preferred = order
            .clone()
            .filter(|i| Some(list[*i].authority.as_str()) != avoid);
        for i in preferred.chain(order) {
            if list[i].breaker().acquire(now) {
                self.cursor.store(i, Ordering::Relaxed);
                return Ok(list[i].clone());
            }
        }
        Err(ClientError::NoEndpointAvailable)
    }

    /// Feeds one attempt's outcome back: `None` = the call was cancelled before an outcome.
    pub fn report(&self, e: &EndpointState, outcome: Option<&Result<(), &ClientError>>) {
        match outcome {
            None => e.breaker().on_abandon(),
            Some(Ok(())) => e.breaker().on_success(),
            Some(Err(err)) if err.endpoint_failed() => self.failed(e),
            // The node answered: it is alive.
            Some(Err(_)) => e.breaker().on_success(),
        }
    }

    /// Counts a transport failure of `e` (also used by streams that broke), moves the sticky
    /// cursor off it and forgets it as leader.
    pub fn failed(&self, e: &EndpointState) {
        e.breaker().on_failure(Instant::now());
        let list = self.all();
        let cur = self.cursor.load(Ordering::Relaxed);
        if list.get(cur).is_some_and(|c| c.authority == e.authority) {
            self.cursor
                .store((cur + 1) % list.len().max(1), Ordering::Relaxed);
        }
        if self.leader().as_deref() == Some(e.authority.as_str()) {
            self.set_leader(None);
        }
    }

    /// Claims the right to run a leader discovery now (at most one at a time, throttled).
    pub fn begin_refresh(&self) -> bool {
        let now = Instant::now();
        let mut last = self.last_refresh.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| now < t + REFRESH_EVERY) {
            return false;
        }
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Ends a discovery started with [`Endpoints::begin_refresh`].
    pub fn end_refresh(&self) {
        self.refreshing.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_normalise_to_authorities() {
        assert_eq!(
            authority("http://127.0.0.1:2379/").ok(),
            Some("127.0.0.1:2379".into())
        );
        assert_eq!(authority("h:1").ok(), Some("h:1".into()));
        assert_eq!(authority("https://h:1").ok().as_deref(), Some("h:1"));
        assert!(authority("nohostport").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn picks_leader_then_skips_open_breakers() -> Result<(), ClientError> {
        let opts = ClientOptions::default();
        let eps = Endpoints::new(["a:1", "b:2", "c:3"], &opts)?;
        let now = Instant::now();
        assert_eq!(eps.acquire(Target::Leader, None, now)?.authority, "a:1");
        eps.set_leader(Some("c:3"));
        assert_eq!(eps.acquire(Target::Leader, None, now)?.authority, "c:3");
        assert_eq!(eps.acquire(Target::Any, None, now)?.authority, "a:1");
        assert_eq!(eps.acquire(Target::Any, Some("a:1"), now)?.authority, "b:2");
        // The leader dies: two failures open its breaker and forget it as leader.
        let c = eps.get_or_add("c:3")?;
        eps.failed(&c);
        eps.failed(&c);
        assert_eq!(eps.leader(), None);
        for e in eps.all() {
            eps.failed(&e);
            eps.failed(&e);
        }
        assert_eq!(
            eps.acquire(Target::Any, None, Instant::now()).err(),
            Some(ClientError::NoEndpointAvailable)
        );
        tokio::time::advance(opts.breaker.open_for).await;
        assert!(eps.acquire(Target::Any, None, Instant::now()).is_ok());
        // A hint naming an unknown member adds it.
        eps.set_leader(Some("d:4"));
        assert_eq!(eps.all().len(), 4);
        Ok(())
    }
}
