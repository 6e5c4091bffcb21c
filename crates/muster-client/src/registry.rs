//! The service registry: register, deregister, update, discover, list services, and
//! [`Subscription`], a service's instances as a snapshot followed by every change.
//!
//! Exactly-once: an ephemeral registration first grants its lease through LeaseGrant with a
//! request id (de-duplicated: one lease however often it is retried), then registers the
//! instance bound to that lease. The registration itself is a Put of the same JSON to the same
//! key — an overwrite, repeated after an unknown outcome (see `kv.rs`). (Registry.Register with
//! `ttl_secs` would grant the lease server-side without a request id, leaving an orphan lease
//! — harmless, it expires — on every retry; the client never uses that form.)
//!
//! Subscribe is built on the KV API here (a range of the service prefix, then a watch from its
//! revision + 1, values decoded as the instance JSON), so it resumes without gaps through node
//! failures and re-lists after a compaction, with one revision sequence throughout.

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use muster_proto::mvccpb::KeyValue;
use muster_proto::registrypb as pb;
use muster_proto::registrypb::registry_client::RegistryClient;
pub use muster_types::registry::{Instance, InstanceKey, ServiceName};
use muster_types::ValidationError;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::Client;
use crate::error::ClientError;
use crate::kv::{overwrite, GetOptions};
use crate::retry::{CallSpec, Safety};
use crate::watch::{EventKind, WatchOptions, WatchUpdate};

/// What to register: the wire form, whose unset fields the server fills with defaults
/// (namespace "public", group "DEFAULT_GROUP", instance id "address:port", weight 100,
/// healthy and enabled).
pub type InstanceSpec = pb::Instance;

/// A registered instance as stored, with its lease and last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    pub instance: Instance,
    /// 0 for a persistent instance.
    pub lease_id: i64,
    pub mod_revision: i64,
}

impl InstanceRecord {
    /// The instance id.
    pub fn id(&self) -> &str {
        &self.instance.instance_id
    }
    /// `address:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.instance.address, self.instance.port)
    }
    /// Healthy and enabled: the only instances a balancer picks.
    pub fn is_available(&self) -> bool {
        self.instance.is_available()
    }
    /// Decodes a stored key-value (`None` when it is not an instance).
    pub fn from_kv(kv: &KeyValue) -> Option<InstanceRecord> {
        let instance = Instance::from_json(&kv.value)?;
        (InstanceKey::parse(&kv.key).as_ref() == Some(&instance.key())).then_some(InstanceRecord {
            instance,
            lease_id: kv.lease,
            mod_revision: kv.mod_revision,
        })
    }
    fn from_pb(p: pb::Instance) -> Result<InstanceRecord, ValidationError> {
        let (lease_id, mod_revision, at) = (p.lease_id, p.mod_revision, p.registered_at_ms);
        let instance = muster_types::pb_registry::instance_from_pb(p, at.max(0) as u64)?;
        Ok(InstanceRecord {
            instance,
            lease_id,
            mod_revision,
        })
    }
}

/// A completed registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub key: InstanceKey,
    pub lease_id: i64,
    pub revision: i64,
}

/// A Discover query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscoverQuery {
    pub namespace: String,
    pub group: String,
    pub service: String,
    /// Only healthy and enabled instances.
    pub healthy_only: bool,
    /// Only instances whose metadata has all these entries.
    pub metadata: HashMap<String, String>,
    /// Only instances in these clusters (empty = any).
    pub clusters: Vec<String>,
    /// Serve from any replica without a read-index (may lag).
    pub serializable: bool,
}

impl DiscoverQuery {
    /// Every instance of `service` in the default namespace and group.
    pub fn service(service: &str) -> Self {
        DiscoverQuery {
            service: service.to_string(),
            ..Default::default()
        }
    }
}

/// A service and its instance counts.
pub type ServiceSummary = pb::ServiceSummary;

/// A change seen by a [`Subscription`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceEvent {
    /// Every current instance (first, and again after a compaction forced a re-list).
    Snapshot {
        revision: i64,
        instances: Vec<InstanceRecord>,
    },
    /// An instance registered or changed.
    Upsert {
        revision: i64,
        instance: InstanceRecord,
    },
    /// An instance deregistered or expired.
    Delete { revision: i64, key: InstanceKey },
}

fn invalid(e: ValidationError) -> ClientError {
    ClientError::InvalidArgument {
        message: e.to_string(),
    }
}

fn key_pb(k: &InstanceKey) -> pb::InstanceKey {
    pb::InstanceKey {
        namespace: k.namespace.clone(),
        group: k.group.clone(),
        service: k.service.clone(),
        instance_id: k.instance_id.clone(),
    }
}

impl Client {
    /// Registers an instance. An ephemeral one (`spec.ephemeral`) needs `ttl_secs`: a lease
    /// is granted for it (exactly once) and must then be kept alive — see
    /// [`Client::register_self`], which does all of that.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] naming a bad field; any other [`ClientError`].
    pub async fn register(
        &self,
        spec: InstanceSpec,
        ttl_secs: Option<i64>,
    ) -> Result<Registration, ClientError> {
        let lease_id = match (spec.ephemeral, ttl_secs) {
            (true, Some(ttl)) => self.lease_grant(ttl).await?.id,
            (true, None) => {
                return Err(ClientError::InvalidArgument {
                    message: "an ephemeral instance needs a TTL".into(),
                })
            }
            (false, _) => 0,
        };
        self.register_with_lease(spec, lease_id).await
    }

    /// Registers an instance bound to an existing lease (0 for a persistent instance).
    ///
    /// # Errors
    /// [`ClientError::LeaseNotFound`] for a lease that is gone; as [`Client::register`].
    pub async fn register_with_lease(
        &self,
        spec: InstanceSpec,
        lease_id: i64,
    ) -> Result<Registration, ClientError> {
        let req = pb::RegisterRequest {
            instance: Some(spec.clone()),
            ttl_secs: 0,
            lease_id,
        };
        let r = self
            .call(CallSpec::write("register", overwrite()), |a| {
                let req = req.clone();
                async move {
                    Ok(RegistryClient::new(a.channel.clone())
                        .register(a.request(req))
                        .await
                        .map_err(|s| a.status(s).with_lease(lease_id))?
                        .into_inner())
                }
            })
            .await?;
        let key = InstanceKey::new(&spec.namespace, &spec.group, &spec.service, &r.instance_id)
            .map_err(invalid)?;
        Ok(Registration {
            key,
            lease_id: r.lease_id,
            revision: r.revision,
        })
    }

    /// Removes an instance; `true` when one was removed.
    ///
    /// # Errors
    /// Any [`ClientError`]. After an unknown first outcome the answer may be `false` although
    /// the first attempt removed it.
    pub async fn deregister(&self, key: &InstanceKey) -> Result<bool, ClientError> {
        let req = pb::DeregisterRequest {
            key: Some(key_pb(key)),
        };
        self.call(CallSpec::write("deregister", overwrite()), |a| {
            let req = req.clone();
            async move {
                let r = RegistryClient::new(a.channel.clone())
                    .deregister(a.request(req))
                    .await
                    .map_err(|s| a.status(s))?
                    .into_inner();
                Ok(r.deleted)
            }
        })
        .await
    }

    /// Changes an instance's weight, metadata or flags in place (`req.key` names it).
    ///
    /// # Errors
    /// [`ClientError::NotFound`] for an unknown instance; any other [`ClientError`].
    pub async fn update_instance(
        &self,
        req: pb::UpdateRequest,
    ) -> Result<InstanceRecord, ClientError> {
        let r = self
            .call(CallSpec::write("update", Safety::Overwrite), |a| {
                let req = req.clone();
                async move {
                    Ok(RegistryClient::new(a.channel.clone())
                        .update(a.request(req))
                        .await
                        .map_err(|s| a.status(s))?
                        .into_inner())
                }
            })
            .await?;
        let p = r.instance.ok_or_else(|| ClientError::InvalidResponse {
            what: "update response without instance".into(),
        })?;
        InstanceRecord::from_pb(p).map_err(|e| ClientError::InvalidResponse {
            what: e.to_string(),
        })
    }

    /// A service's instances, filtered by the query; with the revision they were read at.
    ///
    /// # Errors
    /// Any [`ClientError`] once the retry loop gives up.
    pub async fn discover(
        &self,
        q: DiscoverQuery,
    ) -> Result<(i64, Vec<InstanceRecord>), ClientError> {
        let req = pb::DiscoverRequest {
            namespace: q.namespace,
            group: q.group,
            service: q.service,
            healthy_only: q.healthy_only,
            metadata_selector: q.metadata,
            clusters: q.clusters,
            serializable: q.serializable,
        };
        let r = self
            .call(CallSpec::read("discover"), |a| {
                let req = req.clone();
                async move {
                    Ok(RegistryClient::new(a.channel.clone())
                        .discover(a.request(req))
                        .await
                        .map_err(|s| a.status(s))?
                        .into_inner())
                }
            })
            .await?;
        let instances = r
            .instances
            .into_iter()
            .filter_map(|p| InstanceRecord::from_pb(p).ok())
            .collect();
        Ok((r.revision, instances))
    }

    /// The services of a namespace and group (empty = defaults) with instance counts.
    ///
    /// # Errors
    /// Any [`ClientError`] once the retry loop gives up.
    pub async fn list_services(
        &self,
        namespace: &str,
        group: &str,
    ) -> Result<(i64, Vec<ServiceSummary>), ClientError> {
        let req = pb::ListServicesRequest {
            namespace: namespace.to_string(),
            group: group.to_string(),
            serializable: false,
        };
        let r = self
            .call(CallSpec::read("list_services"), |a| {
                let req = req.clone();
                async move {
                    Ok(RegistryClient::new(a.channel.clone())
                        .list_services(a.request(req))
                        .await
                        .map_err(|s| a.status(s))?
                        .into_inner())
                }
            })
            .await?;
        Ok((r.revision, r.services))
    }

    /// Subscribes to a service: a [`ServiceEvent::Snapshot`], then every change in revision
    /// order, resumed across node failures, re-listed after a compaction.
    ///
    /// ```no_run
    /// # async fn f(client: muster_client::Client) -> Result<(), muster_client::ClientError> {
    /// use futures::StreamExt;
    /// let service = muster_client::ServiceName::new("", "", "orders")
    ///     .map_err(|e| muster_client::ClientError::InvalidArgument { message: e.to_string() })?;
    /// let mut sub = client.subscribe(service);
    /// while let Some(ev) = sub.next().await {
    ///     println!("{:?}", ev?);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn subscribe(&self, service: ServiceName) -> Subscription {
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(self.clone().subscribe_task(service, tx));
        Subscription {
            rx: ReceiverStream::new(rx),
            task,
        }
    }

    async fn subscribe_task(
        self,
        service: ServiceName,
        out: mpsc::Sender<Result<ServiceEvent, ClientError>>,
    ) {
        let prefix = service.range().key;
        loop {
            let listing = match self
                .range(prefix.clone(), GetOptions::new().with_prefix())
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    let keep_going = matches!(e, ClientError::DeadlineExceeded { .. });
                    if out.send(Err(e)).await.is_err() || !keep_going {
                        return;
                    }
                    continue;
                }
            };
            let instances = listing
                .kvs
                .iter()
                .filter_map(InstanceRecord::from_kv)
                .collect();
            let snap = ServiceEvent::Snapshot {
                revision: listing.revision,
                instances,
            };
            if out.send(Ok(snap)).await.is_err() {
                return;
            }
            let opts = WatchOptions::new()
                .with_prefix()
                .with_start_revision(listing.revision + 1);
            let mut w = self.watch(prefix.clone(), opts);
            while let Some(update) = w.next().await {
                let events = match update {
                    Ok(WatchUpdate::Events { events, .. }) => events,
                    Ok(WatchUpdate::Resumed { .. }) => continue,
                    Ok(WatchUpdate::Compacted { .. }) => break,
                    Err(e) => {
                        let end = matches!(e, ClientError::WatchCanceled { .. });
                        if out.send(Err(e)).await.is_err() || end {
                            return;
                        }
                        continue;
                    }
                };
                for e in events {
                    let revision = e.revision();
                    let item = match e.kind {
                        EventKind::Put => match InstanceRecord::from_kv(&e.kv) {
                            Some(instance) => ServiceEvent::Upsert { revision, instance },
                            None => continue,
                        },
                        EventKind::Delete => match InstanceKey::parse(&e.kv.key) {
                            Some(key) => ServiceEvent::Delete { revision, key },
                            None => continue,
                        },
                    };
                    if out.send(Ok(item)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// A service subscription (see [`Client::subscribe`]). Errors it yields are informational;
/// it keeps trying. Dropping it ends it.
#[derive(Debug)]
pub struct Subscription {
    rx: ReceiverStream<Result<ServiceEvent, ClientError>>,
    task: JoinHandle<()>,
}

impl Stream for Subscription {
    type Item = Result<ServiceEvent, ClientError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.rx).poll_next(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}
