//! Conversions between the registry's wire messages (`muster.v1`) and [`crate::registry`].

use muster_proto::registrypb as pb;

use crate::error::ValidationError;
use crate::registry::{check_address, Instance, InstanceKey, DEFAULT_WEIGHT};

/// Builds a domain instance from a Register request's instance: fills defaults (namespace,
/// group, instance id from address:port, weight 100, healthy and enabled), then validates.
pub fn instance_from_pb(
    p: pb::Instance,
    registered_at_ms: u64,
) -> Result<Instance, ValidationError> {
    let port = u16::try_from(p.port).map_err(|_| ValidationError::InvalidArgument {
        field: "port",
        reason: format!("{} is not 1–65535", p.port),
    })?;
    // The derived instance id embeds the address: report a bad address as such.
    check_address(&p.address)?;
    let instance_id = if p.instance_id.is_empty() {
        format!("{}:{}", p.address, port)
    } else {
        p.instance_id
    };
    let key = InstanceKey::new(&p.namespace, &p.group, &p.service, &instance_id)?;
    let i = Instance {
        namespace: key.namespace,
        group: key.group,
        service: key.service,
        instance_id: key.instance_id,
        address: p.address,
        port,
        weight: p.weight.unwrap_or(DEFAULT_WEIGHT),
        metadata: p.metadata.into_iter().collect(),
        healthy: p.healthy.unwrap_or(true),
        enabled: p.enabled.unwrap_or(true),
        ephemeral: p.ephemeral,
        cluster: p.cluster,
        registered_at_ms,
    };
    i.validate()?;
    Ok(i)
}

/// The wire form of a stored instance, with the server-side fields.
pub fn instance_to_pb(i: Instance, lease_id: i64, mod_revision: i64) -> pb::Instance {
    pb::Instance {
        namespace: i.namespace,
        group: i.group,
        service: i.service,
        instance_id: i.instance_id,
        address: i.address,
        port: u32::from(i.port),
        weight: Some(i.weight),
        metadata: i.metadata.into_iter().collect(),
        healthy: Some(i.healthy),
        enabled: Some(i.enabled),
        ephemeral: i.ephemeral,
        cluster: i.cluster,
        registered_at_ms: i.registered_at_ms as i64,
        lease_id,
        mod_revision,
    }
}

/// Validates an instance key from the wire (defaults filled).
pub fn key_from_pb(k: Option<pb::InstanceKey>) -> Result<InstanceKey, ValidationError> {
    let k = k.ok_or(ValidationError::InvalidArgument {
        field: "key",
        reason: "missing".into(),
    })?;
    InstanceKey::new(&k.namespace, &k.group, &k.service, &k.instance_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_filled() {
        let p = pb::Instance {
            service: "orders".into(),
            address: "10.0.0.1".into(),
            port: 80,
            ..Default::default()
        };
        let i = instance_from_pb(p, 5).expect("valid");
        assert_eq!(
            (i.namespace.as_str(), i.group.as_str()),
            ("public", "DEFAULT_GROUP")
        );
        assert_eq!(i.instance_id, "10.0.0.1:80");
        assert_eq!((i.weight, i.healthy, i.enabled), (100, true, true));
        let back = instance_to_pb(i, 7, 9);
        assert_eq!(
            (back.lease_id, back.mod_revision, back.weight),
            (7, 9, Some(100))
        );
    }

    #[test]
    fn bad_port_names_the_field() {
        let p = pb::Instance {
            service: "s".into(),
            address: "h".into(),
            port: 70_000,
            ..Default::default()
        };
        assert!(matches!(
            instance_from_pb(p, 0),
            Err(ValidationError::InvalidArgument { field: "port", .. })
        ));
    }
}
