//! The replicated log's payload. Every command is deterministic: apply never reads a clock or
//! a random source; time comes from [`LogEntry::time_ms`], stamped by the leader.

use serde::{Deserialize, Serialize};

use crate::kv::KeyRange;
use crate::registry::Instance;

/// What the leader appends to the Raft log for a client request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Leader wall-clock time (ms since the Unix epoch) when the entry was proposed.
    pub time_ms: u64,
    pub cmd: Command,
}

/// A state-machine command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    /// Discard history below `revision`.
    Compact {
        revision: i64,
    },
    /// Create a lease. `id` is never 0: the proposer assigns one when the client did not.
    LeaseGrant {
        id: i64,
        ttl_secs: i64,
    },
    /// Delete a lease and every key attached to it, in one revision.
    LeaseRevoke {
        id: i64,
    },
    /// Expiry, proposed only by the leader's lease keeper: delete each listed lease and every key
    /// attached to any of them, all in ONE revision (etcd spends a revision per lease; batching
    /// is what lets thousands of leases expire within a second). Ids that no longer exist are
    /// skipped, so a re-proposal after "commit status unknown" is harmless.
    LeaseExpire {
        ids: Vec<i64>,
    },
    /// Apply `cmd` at most once per `request_id`: the applier remembers the response (durably,
    /// in snapshots too) and answers a repeat of the same request id with it instead of applying
    /// again, so a client may retry a non-idempotent write after "commit status unknown". A
    /// repeat whose `cmd` differs fails with `RequestIdReused`. Remembered for
    /// `REQUEST_ID_RETENTION_MS` of leader time.
    Idempotent {
        request_id: String,
        cmd: Box<Command>,
    },
    /// Several independent client commands proposed together as one log entry (the leader's
    /// proposal batching). Applied in order, each exactly as if it were its own entry: each one
    /// that writes gets its own revision; the response is [`crate::ResponseBody::Batch`] with
    /// one response per command.
    Batch(Vec<Command>),
    /// The registry's Register as ONE command, so it is one log entry and one revision and a
    /// retry with the same request id proposes the identical command: grant the instance's
    /// lease if asked (no event, as in etcd), then put the instance's JSON at its key (one PUT
    /// event) with `registered_at_ms` taken from [`LogEntry::time_ms`]. Appended last: variant
    /// indices are the encoding of logs and snapshots already on disk.
    Register(Box<RegisterInstance>),
    /// Raise or clear an alarm of one member (etcd's Alarm ACTIVATE / DEACTIVATE). Alarms are
    /// replicated state: while one is raised, every node refuses the writes it stops, at apply
    /// (see [`Alarm`]). Never consumes a revision. Appended last, as `Register` was.
    Alarm {
        action: AlarmAction,
        member_id: u64,
        alarm: Alarm,
    },
}

/// An alarm, as etcd's `AlarmType` (NONE is not an alarm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Alarm {
    /// A member's keyspace passed the space quota: puts, txns that put, lease grants and
    /// registrations are refused until the alarm is cleared; deletes, compaction and lease
    /// revocation still work, so space can be freed.
    NoSpace,
    /// The corruption check found a member whose keyspace differs from the others': every
    /// client write is refused until an operator clears it.
    Corrupt,
}

impl Alarm {
    /// etcd's name (`etcdctl alarm list` prints it).
    pub fn name(self) -> &'static str {
        match self {
            Alarm::NoSpace => "NOSPACE",
            Alarm::Corrupt => "CORRUPT",
        }
    }
}

/// Raise or clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlarmAction {
    Activate,
    Deactivate,
}

/// One raised alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AlarmMember {
    pub member_id: u64,
    pub alarm: Alarm,
}

/// What [`Command::Register`] writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterInstance {
    /// The instance, validated by the proposer. Apply overwrites `registered_at_ms` with the
    /// entry's leader time, so proposers leave it 0 (a handler's clock would make each retry a
    /// different command, and nodes could disagree).
    pub instance: Instance,
    pub lease: InstanceLease,
}

/// The lease a registered instance is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceLease {
    /// None: a persistent instance.
    Persistent,
    /// An existing lease; `LeaseNotFound` when it is gone by the time the entry applies.
    Attach(i64),
    /// A lease granted by this same command. The proposer picks `id` (never 0) before
    /// proposing, as for [`Command::LeaseGrant`]; `LeaseExists` when it is taken, and then
    /// nothing is written.
    Grant { id: i64, ttl_secs: i64 },
}

impl InstanceLease {
    /// The lease id the instance's key carries (0 for none).
    pub fn id(&self) -> i64 {
        match *self {
            InstanceLease::Persistent => 0,
            InstanceLease::Attach(id) | InstanceLease::Grant { id, .. } => id,
        }
    }
}

/// How long (in leader time, [`LogEntry::time_ms`]) the applier remembers a request id.
pub const REQUEST_ID_RETENTION_MS: u64 = 5 * 60 * 1000;

impl Command {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Put(_) => "put",
            Command::DeleteRange(_) => "delete_range",
            Command::Txn(_) => "txn",
            Command::Compact { .. } => "compact",
            Command::LeaseGrant { .. } => "lease_grant",
            Command::LeaseRevoke { .. } => "lease_revoke",
            Command::LeaseExpire { .. } => "lease_expire",
            Command::Idempotent { cmd, .. } => cmd.name(),
            Command::Batch(_) => "batch",
            Command::Register(_) => "register",
            Command::Alarm { .. } => "alarm",
        }
    }

    /// Wraps the command in the applier's de-duplication when the client sent a request id, so
    /// a retry after an unknown outcome returns the first result instead of applying twice.
    pub fn idempotent(self, request_id: Option<String>) -> Command {
        match request_id {
            Some(request_id) => Command::Idempotent {
                request_id,
                cmd: Box::new(self),
            },
            None => self,
        }
    }

    /// Whether only the leader itself may originate this command (lease expiry, decided by
    /// the leader's lease keeper): such a command is never accepted from a client or a forward.
    pub fn is_leader_only(&self) -> bool {
        match self {
            Command::LeaseExpire { .. } => true,
            Command::Idempotent { cmd, .. } => cmd.is_leader_only(),
            Command::Batch(cmds) => cmds.iter().any(Command::is_leader_only),
            Command::Put(_)
            | Command::DeleteRange(_)
            | Command::Txn(_)
            | Command::Compact { .. }
            | Command::LeaseGrant { .. }
            | Command::LeaseRevoke { .. }
            | Command::Register(_)
            | Command::Alarm { .. } => false,
        }
    }

    /// Whether the raised `alarm` stops this command (etcd's capped and corrupt appliers).
    /// NOSPACE stops what takes space — puts, txns that put, lease grants, registrations —
    /// and lets deletes, compaction and lease revocation through, so space can be freed.
    /// CORRUPT stops every client write. Alarm commands and the leader's lease expiry always
    /// apply (clearing an alarm must stay possible; expiry is not a client's write).
    pub fn stopped_by(&self, alarm: Alarm) -> bool {
        match self {
            Command::Alarm { .. } | Command::LeaseExpire { .. } => false,
            Command::Idempotent { cmd, .. } => cmd.stopped_by(alarm),
            Command::Batch(cmds) => cmds.iter().any(|c| c.stopped_by(alarm)),
            Command::Put(_) | Command::LeaseGrant { .. } | Command::Register(_) => true,
            Command::Txn(t) => match alarm {
                Alarm::NoSpace => t.puts(),
                Alarm::Corrupt => !t.is_read_only(),
            },
            Command::DeleteRange(_) | Command::Compact { .. } | Command::LeaseRevoke { .. } => {
                alarm == Alarm::Corrupt
            }
        }
    }

    /// A cheap estimate of the command's encoded size in bytes (keys and values dominate), used
    /// to bound proposal batches without encoding them twice.
    pub fn approx_size(&self) -> usize {
        const FIXED: usize = 32;
        fn ops_size(ops: &[TxnOp]) -> usize {
            ops.iter()
                .map(|op| match op {
                    TxnOp::Range(r) => FIXED + r.range.key.len() + r.range.range_end.len(),
                    TxnOp::Put(p) => FIXED + p.key.len() + p.value.len(),
                    TxnOp::DeleteRange(d) => FIXED + d.range.key.len() + d.range.range_end.len(),
                    TxnOp::Txn(t) => txn_size(t),
                })
                .sum()
        }
        fn txn_size(t: &TxnRequest) -> usize {
            let compares: usize = t
                .compare
                .iter()
                .map(|c| {
                    let operand = match &c.target {
                        CompareTarget::Value(v) => v.len(),
                        _ => 8,
                    };
                    FIXED + c.range.key.len() + c.range.range_end.len() + operand
                })
                .sum();
            FIXED + compares + ops_size(&t.success) + ops_size(&t.failure)
        }
        match self {
            Command::Put(p) => FIXED + p.key.len() + p.value.len(),
            Command::DeleteRange(d) => FIXED + d.range.key.len() + d.range.range_end.len(),
            Command::Txn(t) => txn_size(t),
            Command::Compact { .. }
            | Command::LeaseGrant { .. }
            | Command::LeaseRevoke { .. }
            | Command::Alarm { .. } => FIXED,
            Command::LeaseExpire { ids } => FIXED + 8 * ids.len(),
            Command::Idempotent { request_id, cmd } => FIXED + request_id.len() + cmd.approx_size(),
            Command::Batch(cmds) => FIXED + cmds.iter().map(Command::approx_size).sum::<usize>(),
            // The instance's names travel in the command and again in the key and JSON apply
            // writes; the JSON adds field names.
            Command::Register(r) => FIXED + 2 * r.instance.approx_size(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PutRequest {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Lease to attach, 0 for none.
    pub lease: i64,
    pub prev_kv: bool,
    /// Keep the current value (error when the key does not exist).
    pub ignore_value: bool,
    /// Keep the current lease (error when the key does not exist).
    pub ignore_lease: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DeleteRangeRequest {
    pub range: KeyRange,
    pub prev_kv: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// A read (mirrors etcd's RangeRequest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RangeRequest {
    pub range: KeyRange,
    /// 0 = no limit.
    pub limit: i64,
    /// ≤ 0 = the latest revision.
    pub revision: i64,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    pub serializable: bool,
    pub keys_only: bool,
    pub count_only: bool,
    /// Filters; 0 = no filter.
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// What a compare looks at, with the operand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(Vec<u8>),
    Lease(i64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub result: CompareResult,
    pub target: CompareTarget,
    /// A single key or a range (every key in it must satisfy the compare).
    pub range: KeyRange,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

impl TxnRequest {
    /// Whether any branch can write (a read-only txn may be served without the log).
    pub fn is_read_only(&self) -> bool {
        fn ops_read_only(ops: &[TxnOp]) -> bool {
            ops.iter().all(|op| match op {
                TxnOp::Range(_) => true,
                TxnOp::Put(_) | TxnOp::DeleteRange(_) => false,
                TxnOp::Txn(t) => t.is_read_only(),
            })
        }
        ops_read_only(&self.success) && ops_read_only(&self.failure)
    }

    /// Whether any branch can put (what the space quota refuses).
    pub fn puts(&self) -> bool {
        fn ops_put(ops: &[TxnOp]) -> bool {
            ops.iter().any(|op| match op {
                TxnOp::Put(_) => true,
                TxnOp::Range(_) | TxnOp::DeleteRange(_) => false,
                TxnOp::Txn(t) => t.puts(),
            })
        }
        ops_put(&self.success) || ops_put(&self.failure)
    }
}

impl std::fmt::Display for LogEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.cmd.name(), self.time_ms)
    }
}
