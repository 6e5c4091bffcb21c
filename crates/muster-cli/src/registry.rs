//! `muster registry register|deregister|discover|services|watch`.

use futures::StreamExt;
use muster_client::{
    Client, ClientError, DiscoverQuery, InstanceKey, InstanceSpec, ServiceEvent, ServiceName,
};
use serde_json::json;

use crate::cli::{Format, RegistryCmd, ServiceArgs};
use crate::output::{
    emit, instance_json, instance_row, lease_hex, stream_line, Table, INSTANCE_HEADER,
};
use crate::{interrupted, CliError, Result, EXIT_NOT_FOUND};

fn usage(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(e.to_string())
}

fn service_name(s: &ServiceArgs) -> Result<ServiceName> {
    ServiceName::new(&s.namespace, &s.group, &s.service).map_err(usage)
}

pub async fn run(client: &Client, f: Format, cmd: RegistryCmd) -> Result<()> {
    match cmd {
        RegistryCmd::Register {
            service,
            address,
            port,
            id,
            weight,
            metadata,
            cluster,
            ephemeral,
            ttl,
            keep_alive,
        } => {
            let spec = InstanceSpec {
                namespace: service.namespace,
                group: service.group,
                service: service.service,
                instance_id: id,
                address,
                port: u32::from(port),
                weight,
                metadata: metadata.into_iter().collect(),
                cluster,
                ephemeral: ephemeral || keep_alive,
                ..Default::default()
            };
            if keep_alive {
                return register_and_keep(client, f, spec, ttl).await;
            }
            let ttl_secs = spec
                .ephemeral
                .then(|| i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX));
            let r = client.register(spec, ttl_secs).await?;
            emit(
                f,
                || {
                    let mut t = Table::new(&["INSTANCE", "SERVICE", "LEASE", "REVISION"]);
                    t.row(vec![
                        r.key.instance_id.clone(),
                        r.key.service.clone(),
                        if r.lease_id == 0 {
                            "-".into()
                        } else {
                            lease_hex(r.lease_id)
                        },
                        r.revision.to_string(),
                    ]);
                    t
                },
                || registration_json(&r.key, r.lease_id, r.revision),
            );
            Ok(())
        }
        RegistryCmd::Deregister { service, id } => {
            let key = InstanceKey::new(&service.namespace, &service.group, &service.service, &id)
                .map_err(usage)?;
            if client.deregister(&key).await? {
                emit(
                    f,
                    || {
                        let mut t = Table::new(&["DEREGISTERED"]);
                        t.row(vec![key.instance_id.clone()]);
                        t
                    },
                    || json!({"deregistered": key.instance_id, "service": key.service}),
                );
                Ok(())
            } else {
                Err(CliError::NotFound(format!(
                    "instance {} of service {} not found",
                    key.instance_id, key.service
                )))
            }
        }
        RegistryCmd::Discover {
            service,
            healthy_only,
            metadata,
            clusters,
            serializable,
        } => {
            let q = DiscoverQuery {
                namespace: service.namespace,
                group: service.group,
                service: service.service,
                healthy_only,
                metadata: metadata.into_iter().collect(),
                clusters,
                serializable,
            };
            let (revision, instances) = client.discover(q).await?;
            emit(
                f,
                || {
                    let mut t = Table::new(INSTANCE_HEADER);
                    for i in &instances {
                        t.row(instance_row(i));
                    }
                    t
                },
                || json!({"revision": revision, "instances": instances.iter().map(instance_json).collect::<Vec<_>>()}),
            );
            if instances.is_empty() {
                return Err(CliError::Quiet(EXIT_NOT_FOUND));
            }
            Ok(())
        }
        RegistryCmd::Services { namespace, group } => {
            let (revision, services) = client.list_services(&namespace, &group).await?;
            emit(
                f,
                || {
                    let mut t = Table::new(&["SERVICE", "INSTANCES", "HEALTHY"]);
                    for s in &services {
                        t.row(vec![
                            s.service.clone(),
                            s.instances.to_string(),
                            s.healthy_instances.to_string(),
                        ]);
                    }
                    t
                },
                || {
                    let list: Vec<_> = services
                        .iter()
                        .map(|s| json!({"service": s.service, "instances": s.instances, "healthy_instances": s.healthy_instances}))
                        .collect();
                    json!({"revision": revision, "services": list})
                },
            );
            Ok(())
        }
        RegistryCmd::Watch { service, count } => {
            watch(client, f, service_name(&service)?, count).await
        }
    }
}

fn registration_json(key: &InstanceKey, lease_id: i64, revision: i64) -> serde_json::Value {
    json!({
        "namespace": key.namespace,
        "group": key.group,
        "service": key.service,
        "instance_id": key.instance_id,
        "lease_id": lease_id,
        "lease_id_hex": lease_hex(lease_id),
        "revision": revision,
    })
}

/// `register --keep-alive`: registers, reports each renewal and re-registration, and
/// deregisters on interrupt.
async fn register_and_keep(
    client: &Client,
    f: Format,
    spec: InstanceSpec,
    ttl: std::time::Duration,
) -> Result<()> {
    let reg = client.register_self(spec, ttl).await?;
    let key = reg.key().clone();
    let mut states = reg.subscribe();
    let mut last = states.borrow_and_update().clone();
    stream_line(
        f,
        || {
            format!(
                "registered {} of {} under lease {}",
                key.instance_id,
                key.service,
                lease_hex(last.lease_id)
            )
        },
        || json!({"event": "registered", "instance_id": key.instance_id, "lease_id": last.lease_id}),
    );
    let stop = interrupted();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            changed = states.changed() => if changed.is_err() { break },
        }
        let s = states.borrow_and_update().clone();
        if s.registrations > last.registrations {
            stream_line(
                f,
                || {
                    format!(
                        "lease lost; registered again under lease {}",
                        lease_hex(s.lease_id)
                    )
                },
                || json!({"event": "reregistered", "instance_id": key.instance_id, "lease_id": s.lease_id}),
            );
        } else if s.renewals > last.renewals {
            stream_line(
                f,
                || format!("lease {} renewed", lease_hex(s.lease_id)),
                || json!({"event": "renewed", "lease_id": s.lease_id, "renewals": s.renewals}),
            );
        }
        if let Some(e) = s
            .last_error
            .as_ref()
            .filter(|_| s.last_error != last.last_error)
        {
            eprintln!("warning: {e} (still trying)");
        }
        last = s;
    }
    reg.shutdown().await?;
    stream_line(
        f,
        || format!("deregistered {}", key.instance_id),
        || json!({"event": "deregistered", "instance_id": key.instance_id}),
    );
    Ok(())
}

async fn watch(client: &Client, f: Format, service: ServiceName, count: Option<u64>) -> Result<()> {
    let mut sub = client.subscribe(service);
    let mut seen = 0u64;
    let stop = interrupted();
    tokio::pin!(stop);
    loop {
        let item = tokio::select! {
            _ = &mut stop => return Ok(()),
            i = sub.next() => i,
        };
        let Some(item) = item else {
            return Err(CliError::Failed("subscription ended".into()));
        };
        let changes = match item {
            Ok(ServiceEvent::Snapshot {
                revision,
                instances,
            }) => {
                for i in &instances {
                    stream_line(
                        f,
                        || format!("SNAPSHOT {} {} (revision {revision})", i.id(), i.addr()),
                        || json!({"type": "SNAPSHOT", "revision": revision, "instance": instance_json(i)}),
                    );
                }
                0
            }
            Ok(ServiceEvent::Upsert { revision, instance }) => {
                stream_line(
                    f,
                    || {
                        format!(
                            "UPSERT {} {} (revision {revision})",
                            instance.id(),
                            instance.addr()
                        )
                    },
                    || json!({"type": "UPSERT", "revision": revision, "instance": instance_json(&instance)}),
                );
                1
            }
            Ok(ServiceEvent::Delete { revision, key }) => {
                stream_line(
                    f,
                    || format!("DELETE {} (revision {revision})", key.instance_id),
                    || json!({"type": "DELETE", "revision": revision, "instance_id": key.instance_id}),
                );
                1
            }
            Err(e @ ClientError::WatchCanceled { .. }) => return Err(e.into()),
            Err(e) => {
                eprintln!("warning: {e} (still trying)");
                0
            }
        };
        seen += changes;
        if count.is_some_and(|c| seen >= c) {
            return Ok(());
        }
    }
}
