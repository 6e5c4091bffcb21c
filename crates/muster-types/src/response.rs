//! What applying a command (or serving a read) returns.

use serde::{Deserialize, Serialize};

use crate::error::ApplyError;
use crate::kv::KeyValue;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// Whether more keys matched than `limit` returned.
    pub more: bool,
    /// Number of keys that matched (before `limit`).
    pub count: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PutResponse {
    pub prev_kv: Option<KeyValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DeleteRangeResponse {
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResponse {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TxnResponse {
    pub succeeded: bool,
    pub responses: Vec<TxnOpResponse>,
}

/// The body of a successful apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseBody {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact,
    LeaseGrant {
        id: i64,
        ttl_secs: i64,
    },
    LeaseRevoke,
    /// The leases a LeaseExpire actually removed (ids already gone are left out).
    LeaseExpire {
        expired: Vec<i64>,
    },
    /// A membership or blank entry: nothing for a client.
    Empty,
    /// One response per command of a [`crate::Command::Batch`], in order.
    Batch(Vec<CommandResponse>),
    /// A [`crate::Command::Register`]: the instance's lease (0 for a persistent one) and the
    /// leader time stamped as its `registered_at_ms`. Appended last, as the command is.
    Register {
        lease_id: i64,
        registered_at_ms: u64,
    },
    /// An [`crate::Command::Alarm`]: the alarm it raised or cleared, `None` when there was
    /// nothing to change (already raised, or not raised). Appended last, as the command is.
    Alarm(Option<crate::AlarmMember>),
}

/// What applying one log entry returns: the store revision after it, and the outcome.
/// Domain failures (compare failed is not one; lease not found is) are `Err`, not storage errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponse {
    /// The store's revision after applying the entry.
    pub revision: i64,
    pub result: Result<ResponseBody, ApplyError>,
}

impl std::fmt::Display for CommandResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.result {
            Ok(_) => write!(f, "ok@{}", self.revision),
            Err(e) => write!(f, "{e}@{}", self.revision),
        }
    }
}
