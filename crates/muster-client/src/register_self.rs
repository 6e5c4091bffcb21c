//! `register_self`: a service registers its own ephemeral instance and keeps it registered.
//!
//! - Registers under a fresh lease (granted exactly once, see `registry.rs`).
//! - A background task renews the lease every TTL/3 through the retry loop; while the cluster
//!   is unreachable it keeps trying (the lease may outlive the outage).
//! - When a renewal says the lease is gone (TTL 0 / not found: it expired during a partition,
//!   or someone revoked it), the task grants a new lease and registers again.
//! - [`SelfRegistration::shutdown`] stops the task, deregisters and revokes the lease; dropping
//!   the handle does the same on a best-effort background task.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::Client;
use crate::error::ClientError;
use crate::lease::renew_period;
use crate::registry::{InstanceKey, InstanceSpec};

/// What the registration task last did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfState {
    /// The lease the instance is bound to now.
    pub lease_id: i64,
    /// How many times the instance was registered (1 + re-registrations).
    pub registrations: u64,
    /// Successful renewals since the last registration.
    pub renewals: u64,
    /// The last failure, cleared by the next success.
    pub last_error: Option<ClientError>,
}

/// A live self-registration; see [`Client::register_self`].
#[derive(Debug)]
pub struct SelfRegistration {
    client: Client,
    key: InstanceKey,
    state: watch::Receiver<SelfState>,
    task: Option<JoinHandle<()>>,
}

fn ttl_secs(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis().div_ceil(1000))
        .unwrap_or(i64::MAX)
        .max(1)
}

impl Client {
    /// Registers `instance` as ephemeral under a lease of `ttl` and keeps it registered until
    /// [`SelfRegistration::shutdown`] (or drop).
    ///
    /// ```no_run
    /// # async fn f(client: muster_client::Client) -> Result<(), muster_client::ClientError> {
    /// use muster_client::InstanceSpec;
    /// let me = InstanceSpec { service: "orders".into(), address: "10.0.0.7".into(), port: 8080, ..Default::default() };
    /// let reg = client.register_self(me, std::time::Duration::from_secs(10)).await?;
    /// // ... serve ...
    /// reg.shutdown().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The first registration's failure ([`ClientError::InvalidArgument`] naming a bad field,
    /// or the cluster unreachable for a whole call deadline).
    pub async fn register_self(
        &self,
        mut instance: InstanceSpec,
        ttl: Duration,
    ) -> Result<SelfRegistration, ClientError> {
        instance.ephemeral = true;
        let ttl = ttl_secs(ttl);
        let (key, lease_id, granted) = self.register_once(&instance, ttl).await?;
        let (tx, rx) = watch::channel(SelfState {
            lease_id,
            registrations: 1,
            renewals: 0,
            last_error: None,
        });
        let task = tokio::spawn(self.clone().self_task(instance, ttl, granted, tx));
        Ok(SelfRegistration {
            client: self.clone(),
            key,
            state: rx,
            task: Some(task),
        })
    }

    /// Grants a lease and registers under it: (key, lease id, granted TTL).
    async fn register_once(
        &self,
        instance: &InstanceSpec,
        ttl: i64,
    ) -> Result<(InstanceKey, i64, i64), ClientError> {
        let lease = self.lease_grant(ttl).await?;
        match self.register_with_lease(instance.clone(), lease.id).await {
            Ok(r) => Ok((r.key, lease.id, lease.ttl)),
            Err(e) => {
                // Do not leave the lease behind (it would expire anyway).
                let _ = self.lease_revoke(lease.id).await;
                Err(e)
            }
        }
    }

    async fn self_task(
        self,
        instance: InstanceSpec,
        ttl: i64,
        granted: i64,
        tx: watch::Sender<SelfState>,
    ) {
        let mut period = renew_period(granted);
        let mut next = Instant::now() + period;
        loop {
            tokio::time::sleep_until(next).await;
            next = Instant::now() + period;
            let lease_id = tx.borrow().lease_id;
            let mut lost = false;
            match self.keep_alive_within(lease_id, Some(period)).await {
                Ok(_) => tx.send_modify(|s| {
                    s.renewals += 1;
                    s.last_error = None;
                }),
                Err(ClientError::LeaseNotFound { .. }) => lost = true,
                Err(e) => {
                    tracing::debug!(lease = lease_id, error = %e, "self-registration renewal failed");
                    next = Instant::now();
                    tx.send_modify(|s| s.last_error = Some(e));
                }
            }
            if !lost {
                continue;
            }
            tracing::info!(lease = lease_id, service = %instance.service, "lease lost; registering again");
            match self.register_once(&instance, ttl).await {
                Ok((_, lease_id, granted)) => {
                    period = renew_period(granted);
                    next = Instant::now() + period;
                    tx.send_modify(|s| {
                        s.lease_id = lease_id;
                        s.registrations += 1;
                        s.renewals = 0;
                        s.last_error = None;
                    });
                }
                Err(e) => {
                    // Try again on the next tick; the old (dead) lease id stays recorded, so
                    // the next renewal reports it lost again and this branch retries.
                    tx.send_modify(|s| s.last_error = Some(e));
                }
            }
        }
    }
}

impl SelfRegistration {
    /// The instance's key.
    pub fn key(&self) -> &InstanceKey {
        &self.key
    }

    /// The lease the instance is bound to now.
    pub fn lease_id(&self) -> i64 {
        self.state.borrow().lease_id
    }

    /// The task's latest state.
    pub fn state(&self) -> SelfState {
        self.state.borrow().clone()
    }

    /// A receiver of state changes.
    pub fn subscribe(&self) -> watch::Receiver<SelfState> {
        self.state.clone()
    }

    /// Stops renewing, deregisters the instance and revokes its lease.
    ///
    /// # Errors
    /// The deregistration's failure (the instance then vanishes when its lease expires).
    pub async fn shutdown(mut self) -> Result<(), ClientError> {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
        let lease = self.lease_id();
        self.client.deregister(&self.key).await?;
        match self.client.lease_revoke(lease).await {
            Ok(_) | Err(ClientError::LeaseNotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for SelfRegistration {
    fn drop(&mut self) {
        let Some(t) = self.task.take() else { return };
        t.abort();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (client, key, lease) = (self.client.clone(), self.key.clone(), self.lease_id());
        rt.spawn(async move {
            let _ = client.deregister(&key).await;
            let _ = client.lease_revoke(lease).await;
        });
    }
}
