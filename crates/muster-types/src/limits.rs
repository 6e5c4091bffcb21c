//! Request limits. Defaults follow etcd where etcd has one; all are configurable on the server.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::command::{
    Command, DeleteRangeRequest, PutRequest, RegisterInstance, TxnOp, TxnRequest,
};
use crate::error::ValidationError;
use crate::kv::KeyRange;

/// Request limits enforced at the API edge, before a request reaches the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Largest key (and range end), in bytes. etcd has no key limit of its own (a key is
    /// bounded by the request size), and neither has Muster by default: it is the request
    /// limit unless set lower.
    pub max_key_bytes: usize,
    /// Largest encoded request (key + value + overhead), in bytes (etcd: 1.5 MiB).
    pub max_request_bytes: usize,
    /// Most operations in one Txn, counting both branches' ops at each level (etcd: 128).
    pub max_txn_ops: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 1536 * 1024,
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
        }
    }
}

impl Limits {
    fn check_key(&self, key: &[u8]) -> Result<(), ValidationError> {
        if key.is_empty() {
            return Err(ValidationError::EmptyKey);
        }
        if key.len() > self.max_key_bytes {
            return Err(ValidationError::RequestTooLarge {
                size: key.len(),
                limit: self.max_key_bytes,
            });
        }
        Ok(())
    }

    fn check_range(&self, range: &KeyRange) -> Result<(), ValidationError> {
        self.check_key(&range.key)?;
        if range.range_end.len() > self.max_key_bytes {
            return Err(ValidationError::RequestTooLarge {
                size: range.range_end.len(),
                limit: self.max_key_bytes,
            });
        }
        Ok(())
    }

    /// Validates a Range's key.
    pub fn check_read(&self, range: &KeyRange) -> Result<(), ValidationError> {
        self.check_range(range)
    }

    fn check_put(&self, p: &PutRequest) -> Result<(), ValidationError> {
        self.check_key(&p.key)?;
        let size = p.key.len() + p.value.len();
        if size > self.max_request_bytes {
            return Err(ValidationError::RequestTooLarge {
                size,
                limit: self.max_request_bytes,
            });
        }
        Ok(())
    }

    /// A registration is a Put of the instance's JSON at its key: the same key and size
    /// limits, plus the instance's own validation (a command may be built by other code than
    /// the Register handler).
    fn check_register(&self, r: &RegisterInstance) -> Result<(), ValidationError> {
        r.instance.validate()?;
        self.check_put(&PutRequest {
            key: r.instance.key().key(),
            value: r.instance.to_json(),
            ..Default::default()
        })
    }

    fn check_delete(&self, d: &DeleteRangeRequest) -> Result<(), ValidationError> {
        self.check_range(&d.range)
    }

    fn check_txn(&self, t: &TxnRequest) -> Result<usize, ValidationError> {
        let ops = t.compare.len().max(t.success.len()).max(t.failure.len());
        if ops > self.max_txn_ops {
            return Err(ValidationError::TooManyTxnOps {
                ops,
                limit: self.max_txn_ops,
            });
        }
        let mut size = 0;
        for c in &t.compare {
            self.check_range(&c.range)?;
        }
        for branch in [&t.success, &t.failure] {
            for op in branch.iter() {
                size += match op {
                    TxnOp::Range(r) => {
                        self.check_range(&r.range)?;
                        r.range.key.len()
                    }
                    TxnOp::Put(p) => {
                        self.check_put(p)?;
                        p.key.len() + p.value.len()
                    }
                    TxnOp::DeleteRange(d) => {
                        self.check_delete(d)?;
                        d.range.key.len()
                    }
                    TxnOp::Txn(inner) => self.check_txn(inner)?,
                };
            }
            check_no_duplicate_writes(branch)?;
        }
        if size > self.max_request_bytes {
            return Err(ValidationError::RequestTooLarge {
                size,
                limit: self.max_request_bytes,
            });
        }
        Ok(size)
    }

    /// Validates a command before it is proposed.
    pub fn check_command(&self, cmd: &Command) -> Result<(), ValidationError> {
        if cmd.is_leader_only() {
            return Err(ValidationError::InvalidArgument {
                field: "command",
                reason: format!("{} is proposed only by the leader itself", cmd.name()),
            });
        }
        match cmd {
            Command::Put(p) => self.check_put(p),
            Command::DeleteRange(d) => self.check_delete(d),
            Command::Txn(t) => self.check_txn(t).map(|_| ()),
            Command::Compact { .. }
            | Command::LeaseGrant { .. }
            | Command::LeaseRevoke { .. }
            | Command::LeaseExpire { .. }
            | Command::Alarm { .. } => Ok(()),
            Command::Idempotent { request_id, cmd } => {
                check_request_id(request_id)?;
                if matches!(**cmd, Command::Idempotent { .. }) {
                    return Err(ValidationError::InvalidArgument {
                        field: "request_id",
                        reason: "a request carries one request id".into(),
                    });
                }
                self.check_command(cmd)
            }
            Command::Batch(cmds) => cmds.iter().try_for_each(|c| self.check_command(c)),
            Command::Register(r) => self.check_register(r),
        }
    }
}

/// Longest request id (the `x-muster-request-id` metadata), in bytes. Every id is stored for
/// [`crate::REQUEST_ID_RETENTION_MS`], so they must stay small; a UUID is 36.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// A request id is 1..=[`MAX_REQUEST_ID_BYTES`] bytes.
pub fn check_request_id(request_id: &str) -> Result<(), ValidationError> {
    if request_id.is_empty() || request_id.len() > MAX_REQUEST_ID_BYTES {
        return Err(ValidationError::InvalidArgument {
            field: "request_id",
            reason: format!("must be 1 to {MAX_REQUEST_ID_BYTES} bytes"),
        });
    }
    Ok(())
}

/// etcd's rule for a Txn branch ("duplicate key given in txn request"): no key is put twice,
/// and no key put is covered by a delete. A nested txn's Then and Else are mutually exclusive
/// (only one runs): each is checked against the ops around it, but the two may write the same
/// key. A nested txn's deletes also cover the puts of the enclosing level.
fn check_no_duplicate_writes(ops: &[TxnOp]) -> Result<(), ValidationError> {
    branch_writes(ops).map(|_| ())
}

/// The keys `ops` put and the ranges they delete (nested txns included), or DuplicateKey.
fn branch_writes(ops: &[TxnOp]) -> Result<(BTreeSet<&[u8]>, Vec<&KeyRange>), ValidationError> {
    let covered = |deletes: &[&KeyRange], key: &[u8]| deletes.iter().any(|d| d.contains(key));
    let mut deletes: Vec<&KeyRange> = ops
        .iter()
        .filter_map(|op| match op {
            TxnOp::DeleteRange(d) => Some(&d.range),
            _ => None,
        })
        .collect();
    let mut puts: BTreeSet<&[u8]> = BTreeSet::new();
    for op in ops {
        let TxnOp::Txn(t) = op else { continue };
        let (then_puts, then_deletes) = branch_writes(&t.success)?;
        let (else_puts, else_deletes) = branch_writes(&t.failure)?;
        for key in then_puts.iter().chain(&else_puts) {
            if puts.contains(key) || covered(&deletes, key) {
                return Err(ValidationError::DuplicateKey);
            }
        }
        puts.extend(then_puts);
        puts.extend(else_puts);
        deletes.extend(then_deletes);
        deletes.extend(else_deletes);
    }
    for op in ops {
        let TxnOp::Put(p) = op else { continue };
        if !puts.insert(p.key.as_slice()) || covered(&deletes, &p.key) {
            return Err(ValidationError::DuplicateKey);
        }
    }
    Ok((puts, deletes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> TxnOp {
        TxnOp::Put(PutRequest {
            key: k.into(),
            value: b"v".to_vec(),
            ..Default::default()
        })
    }

    #[test]
    fn rejects_empty_and_large_keys() {
        let l = Limits {
            max_key_bytes: 4,
            ..Default::default()
        };
        let c = Command::Put(PutRequest::default());
        assert_eq!(l.check_command(&c), Err(ValidationError::EmptyKey));
        let c = Command::Put(PutRequest {
            key: b"12345".to_vec(),
            ..Default::default()
        });
        assert!(matches!(
            l.check_command(&c),
            Err(ValidationError::RequestTooLarge { size: 5, limit: 4 })
        ));
    }

    #[test]
    fn rejects_large_values() {
        let l = Limits {
            max_request_bytes: 10,
            ..Default::default()
        };
        let c = Command::Put(PutRequest {
            key: b"k".to_vec(),
            value: vec![0; 10],
            ..Default::default()
        });
        assert!(matches!(
            l.check_command(&c),
            Err(ValidationError::RequestTooLarge { .. })
        ));
    }

    #[test]
    fn rejects_too_many_txn_ops_and_duplicates() {
        let l = Limits {
            max_txn_ops: 2,
            ..Default::default()
        };
        let t = TxnRequest {
            success: vec![put("a"), put("b"), put("c")],
            ..Default::default()
        };
        assert!(matches!(
            l.check_command(&Command::Txn(t)),
            Err(ValidationError::TooManyTxnOps { ops: 3, .. })
        ));
        let t = TxnRequest {
            success: vec![put("a"), put("a")],
            ..Default::default()
        };
        assert_eq!(
            l.check_command(&Command::Txn(t)),
            Err(ValidationError::DuplicateKey)
        );
        let del = TxnOp::DeleteRange(DeleteRangeRequest {
            range: KeyRange::prefix("a"),
            prev_kv: false,
        });
        let t = TxnRequest {
            success: vec![put("ab"), del],
            ..Default::default()
        };
        assert_eq!(
            l.check_command(&Command::Txn(t)),
            Err(ValidationError::DuplicateKey)
        );
        // The same key in success and failure is fine: only one branch runs.
        let t = TxnRequest {
            success: vec![put("a")],
            failure: vec![put("a")],
            ..Default::default()
        };
        assert_eq!(l.check_command(&Command::Txn(t)), Ok(()));
    }

    #[test]
    fn checks_registrations_like_puts_of_a_valid_instance() {
        use crate::command::{InstanceLease, RegisterInstance};
        use crate::registry::Instance;
        let instance = Instance {
            namespace: "public".into(),
            group: "DEFAULT_GROUP".into(),
            service: "orders".into(),
            instance_id: "i-1".into(),
            address: "10.0.0.1".into(),
            port: 80,
            weight: 100,
            metadata: [("zone".to_string(), "a".repeat(500))].into(),
            healthy: true,
            enabled: true,
            ephemeral: true,
            cluster: String::new(),
            registered_at_ms: 0,
        };
        let register = |instance: Instance| {
            Command::Register(Box::new(RegisterInstance {
                instance,
                lease: InstanceLease::Grant { id: 1, ttl_secs: 5 },
            }))
        };
        let l = Limits::default();
        assert_eq!(l.check_command(&register(instance.clone())), Ok(()));
        let bad = Instance {
            port: 0,
            ..instance.clone()
        };
        assert!(matches!(
            l.check_command(&register(bad)),
            Err(ValidationError::InvalidArgument { field: "port", .. })
        ));
        let small = Limits {
            max_request_bytes: 256,
            ..Default::default()
        };
        assert!(matches!(
            small.check_command(&register(instance.clone())),
            Err(ValidationError::RequestTooLarge { .. })
        ));
        // The size estimate covers what apply writes (the key and the JSON).
        let cmd = register(instance.clone());
        assert!(cmd.approx_size() >= instance.key().key().len() + instance.to_json().len());
        assert_eq!(cmd.name(), "register");
    }

    #[test]
    fn checks_request_ids_and_the_wrapped_command() {
        let l = Limits::default();
        let once = |request_id: &str, cmd: Command| Command::Idempotent {
            request_id: request_id.into(),
            cmd: Box::new(cmd),
        };
        let grant = Command::LeaseGrant { id: 1, ttl_secs: 5 };
        assert_eq!(l.check_command(&once("r-1", grant.clone())), Ok(()));
        assert!(l.check_command(&once("", grant.clone())).is_err());
        let long = "x".repeat(MAX_REQUEST_ID_BYTES + 1);
        assert!(l.check_command(&once(&long, grant.clone())).is_err());
        assert!(l
            .check_command(&once("a", once("b", grant.clone())))
            .is_err());
        // The wrapped command is checked too.
        assert_eq!(
            l.check_command(&once("r", Command::Put(PutRequest::default()))),
            Err(ValidationError::EmptyKey)
        );
    }
}
