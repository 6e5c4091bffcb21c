//! The service registry's domain: instances, their keys in the keyspace, and validation.
//!
//! An instance is stored as JSON (readable with `etcdctl get`, language-neutral) at
//! `/muster/registry/{namespace}/{group}/{service}/{instance_id}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;
use crate::kv::KeyRange;

/// Where every instance lives in the keyspace.
pub const REGISTRY_PREFIX: &str = "/muster/registry/";
pub const DEFAULT_NAMESPACE: &str = "public";
pub const DEFAULT_GROUP: &str = "DEFAULT_GROUP";
pub const DEFAULT_WEIGHT: u32 = 100;
pub const MAX_WEIGHT: u32 = 10_000;
/// Longest namespace, group, service or instance id.
pub const MAX_NAME_LEN: usize = 128;
pub const MAX_ADDRESS_LEN: usize = 253;
pub const MAX_METADATA_ENTRIES: usize = 64;
pub const MAX_METADATA_KEY_LEN: usize = 128;
pub const MAX_METADATA_VALUE_LEN: usize = 1024;
/// Total bytes of metadata keys and values.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

/// A registered service instance (the stored JSON value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub namespace: String,
    pub group: String,
    pub service: String,
    pub instance_id: String,
    pub address: String,
    pub port: u16,
    pub weight: u32,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    pub healthy: bool,
    pub enabled: bool,
    pub ephemeral: bool,
    #[serde(default)]
    pub cluster: String,
    pub registered_at_ms: u64,
}

/// The four names that place an instance in the keyspace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceKey {
    pub namespace: String,
    pub group: String,
    pub service: String,
    pub instance_id: String,
}

/// A namespace + group + service, the unit of discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceName {
    pub namespace: String,
    pub group: String,
    pub service: String,
}

fn or_default(s: &str, default: &str) -> String {
    if s.is_empty() {
        default.to_string()
    } else {
        s.to_string()
    }
}

/// Names are path segments: letters, digits and `. _ - :` only, 1–128 bytes. `/` would break
/// the key layout; the restriction keeps keys readable in `etcdctl get --prefix`.
pub fn check_name(field: &'static str, s: &str) -> Result<(), ValidationError> {
    if s.is_empty() {
        return Err(ValidationError::InvalidArgument {
            field,
            reason: "must not be empty".into(),
        });
    }
    if s.len() > MAX_NAME_LEN {
        return Err(ValidationError::InvalidArgument {
            field,
            reason: format!("longer than {MAX_NAME_LEN} bytes"),
        });
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')))
    {
        return Err(ValidationError::InvalidArgument {
            field,
            reason: format!("character {c:?} not allowed (letters, digits, '.', '_', '-', ':')"),
        });
    }
    Ok(())
}

impl ServiceName {
    /// Fills defaults and validates.
    pub fn new(namespace: &str, group: &str, service: &str) -> Result<Self, ValidationError> {
        let s = ServiceName {
            namespace: or_default(namespace, DEFAULT_NAMESPACE),
            group: or_default(group, DEFAULT_GROUP),
            service: service.to_string(),
        };
        check_name("namespace", &s.namespace)?;
        check_name("group", &s.group)?;
        check_name("service", &s.service)?;
        Ok(s)
    }

    /// Every instance of the service.
    pub fn range(&self) -> KeyRange {
        KeyRange::prefix(format!(
            "{REGISTRY_PREFIX}{}/{}/{}/",
            self.namespace, self.group, self.service
        ))
    }
}

/// Every service of a namespace and group.
pub fn group_range(namespace: &str, group: &str) -> Result<KeyRange, ValidationError> {
    let namespace = or_default(namespace, DEFAULT_NAMESPACE);
    let group = or_default(group, DEFAULT_GROUP);
    check_name("namespace", &namespace)?;
    check_name("group", &group)?;
    Ok(KeyRange::prefix(format!(
        "{REGISTRY_PREFIX}{namespace}/{group}/"
    )))
}

impl InstanceKey {
    /// Fills defaults and validates.
    pub fn new(
        namespace: &str,
        group: &str,
        service: &str,
        instance_id: &str,
    ) -> Result<Self, ValidationError> {
        let s = ServiceName::new(namespace, group, service)?;
        check_name("instance_id", instance_id)?;
        Ok(InstanceKey {
            namespace: s.namespace,
            group: s.group,
            service: s.service,
            instance_id: instance_id.into(),
        })
    }

    /// The instance's key in the keyspace.
    pub fn key(&self) -> Vec<u8> {
        format!(
            "{REGISTRY_PREFIX}{}/{}/{}/{}",
            self.namespace, self.group, self.service, self.instance_id
        )
        .into_bytes()
    }

    /// Parses a registry key back into its names.
    pub fn parse(key: &[u8]) -> Option<InstanceKey> {
        let s = std::str::from_utf8(key)
            .ok()?
            .strip_prefix(REGISTRY_PREFIX)?;
        let mut parts = s.split('/');
        let k = InstanceKey {
            namespace: parts.next()?.to_string(),
            group: parts.next()?.to_string(),
            service: parts.next()?.to_string(),
            instance_id: parts.next()?.to_string(),
        };
        parts.next().is_none().then_some(k)
    }
}

impl Instance {
    pub fn key(&self) -> InstanceKey {
        InstanceKey {
            namespace: self.namespace.clone(),
            group: self.group.clone(),
            service: self.service.clone(),
            instance_id: self.instance_id.clone(),
        }
    }

    /// Healthy and enabled: the only instances a balancer may pick.
    pub fn is_available(&self) -> bool {
        self.healthy && self.enabled
    }

    /// Checks every field; the error names the field.
    pub fn validate(&self) -> Result<(), ValidationError> {
        InstanceKey::new(
            &self.namespace,
            &self.group,
            &self.service,
            &self.instance_id,
        )?;
        check_address(&self.address)?;
        if self.port == 0 {
            return Err(ValidationError::InvalidArgument {
                field: "port",
                reason: "must be 1–65535".into(),
            });
        }
        if self.weight > MAX_WEIGHT {
            return Err(ValidationError::InvalidArgument {
                field: "weight",
                reason: format!("{} is above the maximum {MAX_WEIGHT}", self.weight),
            });
        }
        if !self.cluster.is_empty() {
            check_name("cluster", &self.cluster)?;
        }
        check_metadata(&self.metadata)
    }

    /// A cheap estimate of the stored JSON's size in bytes, for proposal batching.
    pub fn approx_size(&self) -> usize {
        // Field names, quotes and numbers of the JSON object.
        const FIXED: usize = 192;
        let names = self.namespace.len()
            + self.group.len()
            + self.service.len()
            + self.instance_id.len()
            + self.address.len()
            + self.cluster.len();
        let metadata: usize = self
            .metadata
            .iter()
            .map(|(k, v)| k.len() + v.len() + 6)
            .sum();
        FIXED + names + metadata
    }

    /// The stored JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a struct of strings, numbers and a string map cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(b: &[u8]) -> Option<Instance> {
        serde_json::from_slice(b).ok()
    }
}

/// An IP address or a DNS host name.
pub fn check_address(a: &str) -> Result<(), ValidationError> {
    let bad = |reason: &str| ValidationError::InvalidArgument {
        field: "address",
        reason: reason.into(),
    };
    if a.is_empty() {
        return Err(bad("must not be empty"));
    }
    if a.len() > MAX_ADDRESS_LEN {
        return Err(bad("longer than 253 bytes"));
    }
    if a.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    // A DNS name: labels of letters, digits and '-', separated by dots.
    let ok = a.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
    });
    if ok {
        Ok(())
    } else {
        Err(bad("not an IP address or host name"))
    }
}

/// Checks metadata against the documented size limits.
pub fn check_metadata(m: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    let bad = |reason: String| ValidationError::InvalidArgument {
        field: "metadata",
        reason,
    };
    if m.len() > MAX_METADATA_ENTRIES {
        return Err(bad(format!(
            "{} entries; at most {MAX_METADATA_ENTRIES}",
            m.len()
        )));
    }
    let mut total = 0;
    for (k, v) in m {
        if k.is_empty() || k.len() > MAX_METADATA_KEY_LEN {
            return Err(bad(format!(
                "key {k:?} must be 1–{MAX_METADATA_KEY_LEN} bytes"
            )));
        }
        if v.len() > MAX_METADATA_VALUE_LEN {
            return Err(bad(format!(
                "value of {k:?} is longer than {MAX_METADATA_VALUE_LEN} bytes"
            )));
        }
        total += k.len() + v.len();
    }
    if total > MAX_METADATA_BYTES {
        return Err(bad(format!(
            "{total} bytes in all; at most {MAX_METADATA_BYTES}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst() -> Instance {
        Instance {
            namespace: "public".into(),
            group: "DEFAULT_GROUP".into(),
            service: "orders".into(),
            instance_id: "10.0.0.1:8080".into(),
            address: "10.0.0.1".into(),
            port: 8080,
            weight: 100,
            metadata: BTreeMap::new(),
            healthy: true,
            enabled: true,
            ephemeral: true,
            cluster: String::new(),
            registered_at_ms: 0,
        }
    }

    #[test]
    fn keys_round_trip() {
        let k = inst().key();
        assert_eq!(
            k.key(),
            b"/muster/registry/public/DEFAULT_GROUP/orders/10.0.0.1:8080".to_vec()
        );
        assert_eq!(InstanceKey::parse(&k.key()), Some(k));
        assert_eq!(InstanceKey::parse(b"/muster/registry/a/b/c"), None);
        assert!(ServiceName::new("", "", "orders")
            .expect("valid")
            .range()
            .contains(&inst().key().key()));
    }

    #[test]
    fn validation_names_the_field() {
        let field = |i: Instance| match i.validate() {
            Err(ValidationError::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        };
        assert_eq!(
            field(Instance {
                service: "a/b".into(),
                ..inst()
            }),
            "service"
        );
        assert_eq!(
            field(Instance {
                address: "bad host!".into(),
                ..inst()
            }),
            "address"
        );
        assert_eq!(field(Instance { port: 0, ..inst() }), "port");
        assert_eq!(
            field(Instance {
                weight: 10_001,
                ..inst()
            }),
            "weight"
        );
        let big: BTreeMap<String, String> =
            (0..65).map(|i| (format!("k{i}"), "v".into())).collect();
        assert_eq!(
            field(Instance {
                metadata: big,
                ..inst()
            }),
            "metadata"
        );
        assert_eq!(inst().validate(), Ok(()));
        assert_eq!(
            Instance {
                address: "svc-1.example.com".into(),
                ..inst()
            }
            .validate(),
            Ok(())
        );
    }

    #[test]
    fn json_round_trip() {
        let i = Instance {
            metadata: [("zone".into(), "a".into())].into(),
            ..inst()
        };
        assert_eq!(Instance::from_json(&i.to_json()), Some(i));
    }
}
