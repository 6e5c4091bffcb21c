//! Leases: grant, revoke, time-to-live, list, single keep-alives, and [`KeepAlive`], a handle
//! whose background task renews a lease every TTL/3.
//!
//! Exactly-once: LeaseGrant and LeaseRevoke carry a request id that the server de-duplicates
//! (`Command::Idempotent`), so they are retried after an unknown outcome and still apply once:
//! a retried grant returns the same lease (with id 0 the server derives the id from the request
//! id), a retried revoke answers like the first. Keep-alive, TimeToLive and Leases are reads.
//!
//! Each renewal is one short `LeaseKeepAlive` stream exchange (one request, one reply) made
//! through the retry loop, so a renewal rides through leader changes and dead nodes like any
//! other call; no long-lived stream needs its own reconnect logic.

use std::time::Duration;

use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::lease_client::LeaseClient;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::Client;
use crate::error::ClientError;
use crate::kv::revision;
use crate::retry::{CallSpec, Safety};

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    pub id: i64,
    /// The TTL granted, in seconds (the server may raise a small one).
    pub ttl: i64,
    pub revision: i64,
}

/// A lease's remaining time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseTimeToLive {
    pub id: i64,
    /// Seconds left; -1 when the lease does not exist.
    pub ttl: i64,
    pub granted_ttl: i64,
    /// Attached keys, when asked for.
    pub keys: Vec<Vec<u8>>,
}

/// What a [`KeepAlive`] task last saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeepAliveState {
    /// Renewed; the TTL the leader restarted.
    Alive { ttl: i64, renewals: u64 },
    /// The last renewal failed (the cluster unreachable); retrying. The lease may still live.
    Retrying { error: ClientError },
    /// The lease is gone (expired or revoked): the task has stopped.
    Lost,
}

impl Client {
    /// Grants a lease of `ttl_secs` with a server-chosen id.
    ///
    /// ```no_run
    /// # async fn f(client: muster_client::Client) -> Result<(), muster_client::ClientError> {
    /// let lease = client.lease_grant(10).await?;
    /// client.put_with("session/me", "alive", muster_client::PutOptions { lease: lease.id, ..Default::default() }).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::OutOfRange`] for a TTL above the server's maximum; any other
    /// [`ClientError`]. Exactly once, even when retried.
    pub async fn lease_grant(&self, ttl_secs: i64) -> Result<LeaseGrant, ClientError> {
        self.lease_grant_with_id(0, ttl_secs).await
    }

    /// Grants a lease with the caller's `id` (0 = the server picks).
    ///
    /// # Errors
    /// [`ClientError::LeaseExists`] when the id is taken; as [`Client::lease_grant`].
    pub async fn lease_grant_with_id(
        &self,
        id: i64,
        ttl_secs: i64,
    ) -> Result<LeaseGrant, ClientError> {
        let req = pb::LeaseGrantRequest { ttl: ttl_secs, id };
        self.call(
            CallSpec::write("lease_grant", Safety::Deduped),
            |a| async move {
                let r = LeaseClient::new(a.channel.clone())
                    .lease_grant(a.request(req))
                    .await
                    .map_err(|s| a.status(s))?
                    .into_inner();
                if !r.error.is_empty() {
                    return Err(ClientError::InvalidResponse { what: r.error });
                }
                Ok(LeaseGrant {
                    id: r.id,
                    ttl: r.ttl,
                    revision: revision(r.header.as_ref()),
                })
            },
        )
        .await
    }

    /// Revokes lease `id`, deleting its keys; returns the revision.
    ///
    /// # Errors
    /// [`ClientError::LeaseNotFound`]; any other [`ClientError`]. Exactly once, even when
    /// retried.
    pub async fn lease_revoke(&self, id: i64) -> Result<i64, ClientError> {
        self.call(
            CallSpec::write("lease_revoke", Safety::Deduped),
            |a| async move {
                let r = LeaseClient::new(a.channel.clone())
                    .lease_revoke(a.request(pb::LeaseRevokeRequest { id }))
                    .await
                    .map_err(|s| a.status(s).with_lease(id))?
                    .into_inner();
                Ok(revision(r.header.as_ref()))
            },
        )
        .await
    }

    /// A lease's remaining TTL (-1 when it does not exist), with its keys when `keys`.
    ///
    /// # Errors
    /// Any [`ClientError`] once the retry loop gives up.
    pub async fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTimeToLive, ClientError> {
        self.call(CallSpec::read("lease_time_to_live"), |a| async move {
            let r = LeaseClient::new(a.channel.clone())
                .lease_time_to_live(a.request(pb::LeaseTimeToLiveRequest { id, keys }))
                .await
                .map_err(|s| a.status(s).with_lease(id))?
                .into_inner();
            Ok(LeaseTimeToLive {
                id: r.id,
                ttl: r.ttl,
                granted_ttl: r.granted_ttl,
                keys: r.keys,
            })
        })
        .await
    }

    /// Every lease id.
    ///
    /// # Errors
    /// Any [`ClientError`] once the retry loop gives up.
    pub async fn lease_leases(&self) -> Result<Vec<i64>, ClientError> {
        self.call(CallSpec::read("lease_leases"), |a| async move {
            let r = LeaseClient::new(a.channel.clone())
                .lease_leases(a.request(pb::LeaseLeasesRequest {}))
                .await
                .map_err(|s| a.status(s))?
                .into_inner();
            Ok(r.leases.into_iter().map(|l| l.id).collect())
        })
        .await
    }

    /// Renews lease `id` once; returns the TTL the leader restarted.
    ///
    /// # Errors
    /// [`ClientError::LeaseNotFound`] when the lease is gone (the server answers TTL 0);
    /// any other [`ClientError`] once the retry loop gives up.
    pub async fn lease_keep_alive_once(&self, id: i64) -> Result<i64, ClientError> {
        self.keep_alive_within(id, None).await
    }

    /// One renewal with its own deadline (`None` = the call timeout).
    pub(crate) async fn keep_alive_within(
        &self,
        id: i64,
        within: Option<Duration>,
    ) -> Result<i64, ClientError> {
        let mut spec = CallSpec::read("lease_keep_alive");
        spec.timeout = within;
        let ttl = self
            .call(spec, |a| async move {
                let req = tokio_stream::once(pb::LeaseKeepAliveRequest { id });
                let mut replies = LeaseClient::new(a.channel.clone())
                    .lease_keep_alive(a.request(req))
                    .await
                    .map_err(|s| a.status(s))?
                    .into_inner();
                match replies.message().await {
                    Ok(Some(r)) => Ok(r.ttl),
                    Ok(None) => Err(ClientError::ConnectionLost {
                        endpoint: a.endpoint.authority.clone(),
                        reason: "keep-alive stream ended without a reply".into(),
                    }),
                    Err(s) => Err(a.status(s)),
                }
            })
            .await?;
        if ttl <= 0 {
            return Err(ClientError::LeaseNotFound { id });
        }
        Ok(ttl)
    }

    /// Keeps lease `id` (of `ttl_secs`) alive in a background task, renewing every TTL/3,
    /// until the handle is stopped or dropped, or the lease is lost.
    ///
    /// ```no_run
    /// # async fn f(client: muster_client::Client) -> Result<(), muster_client::ClientError> {
    /// let lease = client.lease_grant(9).await?;
    /// let keeper = client.lease_keep_alive(lease.id, lease.ttl);
    /// // ... the lease lives while `keeper` does ...
    /// keeper.stop().await;
    /// # Ok(()) }
    /// ```
    pub fn lease_keep_alive(&self, id: i64, ttl_secs: i64) -> KeepAlive {
        let (tx, rx) = watch::channel(KeepAliveState::Alive {
            ttl: ttl_secs,
            renewals: 0,
        });
        let client = self.clone();
        let task = tokio::spawn(async move { client.keep_alive_task(id, ttl_secs, tx).await });
        KeepAlive {
            id,
            state: rx,
            task: Some(task),
        }
    }

    async fn keep_alive_task(&self, id: i64, ttl_secs: i64, tx: watch::Sender<KeepAliveState>) {
        let period = renew_period(ttl_secs);
        let mut renewals = 0u64;
        let mut next = Instant::now();
        loop {
            tokio::time::sleep_until(next).await;
            next = Instant::now() + period;
            let state = match self.keep_alive_within(id, Some(period)).await {
                Ok(ttl) => {
                    renewals += 1;
                    KeepAliveState::Alive { ttl, renewals }
                }
                Err(ClientError::LeaseNotFound { .. }) => KeepAliveState::Lost,
                Err(error) => {
                    tracing::debug!(lease = id, %error, "keep-alive failed; retrying");
                    // Try again at once: the failed call already used up its period.
                    next = Instant::now();
                    KeepAliveState::Retrying { error }
                }
            };
            let lost = state == KeepAliveState::Lost;
            if tx.send(state).is_err() || lost {
                return;
            }
        }
    }
}

/// The interval between renewals of a `ttl_secs` lease: a third of it (at least 100 ms).
pub fn renew_period(ttl_secs: i64) -> Duration {
    Duration::from_millis((ttl_secs.max(1) as u64).saturating_mul(1000) / 3)
        .max(Duration::from_millis(100))
}

/// A running keep-alive; dropping it stops the renewals (the lease then expires after its TTL).
#[derive(Debug)]
pub struct KeepAlive {
    id: i64,
    state: watch::Receiver<KeepAliveState>,
    task: Option<JoinHandle<()>>,
}

impl KeepAlive {
    /// The lease kept alive.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The latest state.
    pub fn state(&self) -> KeepAliveState {
        self.state.borrow().clone()
    }

    /// A receiver of state changes (every renewal is a change).
    pub fn subscribe(&self) -> watch::Receiver<KeepAliveState> {
        self.state.clone()
    }

    /// Stops renewing.
    pub async fn stop(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
