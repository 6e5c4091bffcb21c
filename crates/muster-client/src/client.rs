//! [`Client`]: the handle every API hangs off. Cheap to clone (one `Arc`); all clones share the
//! endpoints, their channels and breakers, the leader hint and the request-id sequence.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::endpoints::Endpoints;
use crate::error::ClientError;
use crate::options::ClientOptions;

/// A Muster client. See the crate docs for an overview.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Endpoints,
    options: ClientOptions,
    /// Random per client (from the OS, never from `options.seed`): request ids of two clients
    /// never collide.
    nonce: u64,
    next_id: AtomicU64,
    rng: Mutex<StdRng>,
    stats: Stats,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field(
                "endpoints",
                &self
                    .inner
                    .endpoints
                    .all()
                    .iter()
                    .map(|e| e.authority.clone())
                    .collect::<Vec<_>>(),
            )
            .field("leader", &self.inner.endpoints.leader())
            .finish()
    }
}

/// Counters of the retry loop, for tests and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    retries: AtomicU64,
    unknown_outcome_retries: AtomicU64,
}

impl Stats {
    pub(crate) fn record_retry(&self, unknown_outcome: bool) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        if unknown_outcome {
            self.unknown_outcome_retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Attempts that were followed by another attempt.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Retries made after an attempt whose outcome was unknown (each may have applied).
    pub fn unknown_outcome_retries(&self) -> u64 {
        self.unknown_outcome_retries.load(Ordering::Relaxed)
    }
}

impl Client {
    /// Creates a client over `endpoints` (`host:port` or `http://host:port`). Channels connect
    /// lazily, on first use; leader discovery starts in the background.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), muster_client::ClientError> {
    /// use muster_client::{Client, ClientOptions};
    /// let client = Client::connect(["127.0.0.1:2379", "127.0.0.1:22379"], ClientOptions::default()).await?;
    /// client.put("greeting", "hello").await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::InvalidEndpoint`] for an unparseable or empty endpoint list,
    /// [`ClientError::InvalidArgument`] for inconsistent options.
    pub async fn connect<S: AsRef<str>>(
        endpoints: impl IntoIterator<Item = S>,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        options.validate()?;
        let rng = match options.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_entropy(),
        };
        let client = Client {
            inner: Arc::new(Inner {
                endpoints: Endpoints::new(endpoints, &options)?,
                options,
                nonce: rand::rngs::OsRng.next_u64(),
                next_id: AtomicU64::new(1),
                rng: Mutex::new(rng),
                stats: Stats::default(),
            }),
        };
        client.spawn_leader_refresh();
        Ok(client)
    }

    /// The options the client was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The endpoint set (addresses, breakers, leader hint).
    pub fn endpoints(&self) -> &Endpoints {
        &self.inner.endpoints
    }

    /// The leader's address as far as this client knows.
    pub fn leader_hint(&self) -> Option<String> {
        self.inner.endpoints.leader()
    }

    /// Retry counters.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// A fresh request id: `{client nonce}-{sequence}`, unique per logical call.
    pub(crate) fn next_request_id(&self) -> String {
        let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}-{n}", self.inner.nonce)
    }

    pub(crate) fn with_rng<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        let mut rng = self.inner.rng.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut rng)
    }

    /// Starts a leader discovery in the background unless one ran very recently.
    pub(crate) fn spawn_leader_refresh(&self) {
        if !self.inner.options.discover_leader || !self.inner.endpoints.begin_refresh() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.inner.endpoints.end_refresh();
            return;
        };
        let client = self.clone();
        rt.spawn(async move {
            if let Err(e) = client.refresh_leader().await {
                tracing::debug!("leader discovery: {e}");
            }
            client.inner.endpoints.end_refresh();
        });
    }
}
