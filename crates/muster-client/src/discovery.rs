//! [`DiscoveryCache`]: a local, consistent view of one service's instances, fed by a
//! [`Subscription`](crate::Subscription) (a listing, then the watch of the service prefix).
//!
//! Consistent: the view is always the registry's state at one revision — a snapshot replaces
//! it whole, events apply in revision order, and the watch resumes without gaps. Readable while
//! the cluster is unreachable: it keeps serving the last state it had (see
//! [`DiscoveryCache::last_error`] for whether it is currently cut off).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::balancer::{Balancer, Picked};
use crate::client::Client;
use crate::error::ClientError;
use crate::registry::{InstanceRecord, ServiceEvent, ServiceName};

#[derive(Debug, Default)]
struct View {
    revision: i64,
    instances: BTreeMap<String, InstanceRecord>,
    synced: bool,
    last_error: Option<ClientError>,
}

/// A cached, self-updating list of a service's instances.
#[derive(Debug)]
pub struct DiscoveryCache {
    service: ServiceName,
    view: Arc<RwLock<View>>,
    version: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl Client {
    /// Starts a discovery cache for `service`.
    ///
    /// ```no_run
    /// # async fn f(client: muster_client::Client) -> Result<(), muster_client::ClientError> {
    /// use muster_client::{balancer::RoundRobin, ServiceName};
    /// let service = ServiceName::new("", "", "orders")
    ///     .map_err(|e| muster_client::ClientError::InvalidArgument { message: e.to_string() })?;
    /// let cache = client.discovery_cache(service);
    /// cache.wait_synced(std::time::Duration::from_secs(5)).await?;
    /// let lb = cache.balanced(RoundRobin::new());
    /// if let Some(p) = lb.pick(None) {
    ///     println!("call {}", p.instance().addr());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn discovery_cache(&self, service: ServiceName) -> DiscoveryCache {
        let view = Arc::new(RwLock::new(View::default()));
        let (tx, rx) = watch::channel(0u64);
        let task = tokio::spawn(feed(self.clone(), service.clone(), view.clone(), tx));
        DiscoveryCache {
            service,
            view,
            version: rx,
            task,
        }
    }
}

async fn feed(
    client: Client,
    service: ServiceName,
    view: Arc<RwLock<View>>,
    tx: watch::Sender<u64>,
) {
    let mut sub = client.subscribe(service);
    while let Some(item) = sub.next().await {
        {
            let mut v = view.write().unwrap_or_else(|p| p.into_inner());
            match item {
                Ok(ServiceEvent::Snapshot {
                    revision,
                    instances,
                }) => {
                    v.instances = instances
                        .into_iter()
                        .map(|i| (i.id().to_string(), i))
                        .collect();
                    v.revision = revision;
                    v.synced = true;
                    v.last_error = None;
                }
                Ok(ServiceEvent::Upsert { revision, instance }) => {
                    v.instances.insert(instance.id().to_string(), instance);
                    v.revision = v.revision.max(revision);
                    v.last_error = None;
                }
                Ok(ServiceEvent::Delete { revision, key }) => {
                    v.instances.remove(&key.instance_id);
                    v.revision = v.revision.max(revision);
                    v.last_error = None;
                }
                Err(e) => v.last_error = Some(e),
            }
        }
        tx.send_modify(|n| *n += 1);
    }
}

impl DiscoveryCache {
    /// The service cached.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    /// Every instance (available or not), ordered by instance id.
    pub fn instances(&self) -> Vec<InstanceRecord> {
        self.read(|v| v.instances.values().cloned().collect())
    }

    /// The healthy and enabled instances, ordered by instance id.
    pub fn available(&self) -> Vec<InstanceRecord> {
        self.read(|v| {
            v.instances
                .values()
                .filter(|i| i.is_available())
                .cloned()
                .collect()
        })
    }

    /// The registry revision the view reflects.
    pub fn revision(&self) -> i64 {
        self.read(|v| v.revision)
    }

    /// Whether the first listing has arrived.
    pub fn is_synced(&self) -> bool {
        self.read(|v| v.synced)
    }

    /// The last error of the feed, cleared once it gets through again.
    pub fn last_error(&self) -> Option<ClientError> {
        self.read(|v| v.last_error.clone())
    }

    /// A counter bumped on every change (for balancers and waiters).
    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    /// A receiver notified on every change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.version.clone()
    }

    /// Waits for the first listing.
    ///
    /// # Errors
    /// [`ClientError::DeadlineExceeded`] when it did not arrive within `timeout` (with the
    /// feed's last error).
    pub async fn wait_synced(&self, timeout: Duration) -> Result<(), ClientError> {
        let mut rx = self.version.clone();
        let r = tokio::time::timeout(timeout, async {
            loop {
                if self.is_synced() {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        match (r, self.is_synced()) {
            (_, true) => Ok(()),
            _ => Err(ClientError::DeadlineExceeded {
                attempts: 0,
                maybe_applied: false,
                last: Box::new(
                    self.last_error()
                        .unwrap_or(ClientError::NoEndpointAvailable),
                ),
            }),
        }
    }

    /// A balancer kept up to date with this cache's available instances.
    pub fn balanced<B: Balancer>(&self, balancer: B) -> Balanced<'_, B> {
        Balanced {
            cache: self,
            balancer,
            seen: std::sync::atomic::AtomicU64::new(u64::MAX),
        }
    }

    fn read<T>(&self, f: impl FnOnce(&View) -> T) -> T {
        f(&self.view.read().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for DiscoveryCache {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A [`Balancer`] fed by a [`DiscoveryCache`]: each pick first refreshes the candidates when
/// the cache changed.
#[derive(Debug)]
pub struct Balanced<'a, B> {
    cache: &'a DiscoveryCache,
    balancer: B,
    seen: std::sync::atomic::AtomicU64,
}

impl<B: Balancer> Balanced<'_, B> {
    /// Picks an instance (`key` for hashing balancers); `None` when none is available.
    pub fn pick(&self, key: Option<&[u8]>) -> Option<Picked> {
        use std::sync::atomic::Ordering;
        let v = self.cache.version();
        if self.seen.swap(v, Ordering::AcqRel) != v {
            self.balancer.update(&self.cache.available());
        }
        self.balancer.pick(key)
    }

    /// The balancer itself.
    pub fn balancer(&self) -> &B {
        &self.balancer
    }
}
