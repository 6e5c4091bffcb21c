//! The transaction builder: `client.txn().when(compares).and_then(ops).or_else(ops).commit()`.
//!
//! A txn with compares is a compare-and-swap: repeating it blindly after an unknown outcome
//! could see its own first write and take the other branch. It carries a request id that the
//! server de-duplicates, so a retry returns the first attempt's result instead of running
//! again (see `kv::KV_WRITES_DEDUPED`). A txn without writes is a read and is retried like one.

use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::kv_client::KvClient;
use muster_proto::mvccpb::KeyValue;

use crate::client::Client;
use crate::error::ClientError;
use crate::kv::{prefix_end, revision, GetOptions};
use crate::retry::CallSpec;

/// How a compare compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// One compare of a txn.
#[derive(Debug, Clone, PartialEq)]
pub struct Compare(pb::Compare);

impl Compare {
    fn new(key: impl Into<Vec<u8>>, op: CompareOp, target: pb::compare::TargetUnion) -> Self {
        use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
        let t = match &target {
            U::Version(_) => T::Version,
            U::CreateRevision(_) => T::Create,
            U::ModRevision(_) => T::Mod,
            U::Value(_) => T::Value,
            U::Lease(_) => T::Lease,
        };
        let r = match op {
            CompareOp::Equal => R::Equal,
            CompareOp::Greater => R::Greater,
            CompareOp::Less => R::Less,
            CompareOp::NotEqual => R::NotEqual,
        };
        Compare(pb::Compare {
            result: r as i32,
            target: t as i32,
            key: key.into(),
            range_end: Vec::new(),
            target_union: Some(target),
        })
    }
    /// Compares the key's value.
    pub fn value(key: impl Into<Vec<u8>>, op: CompareOp, value: impl Into<Vec<u8>>) -> Self {
        Self::new(key, op, pb::compare::TargetUnion::Value(value.into()))
    }
    /// Compares the key's version (0 = the key does not exist).
    pub fn version(key: impl Into<Vec<u8>>, op: CompareOp, version: i64) -> Self {
        Self::new(key, op, pb::compare::TargetUnion::Version(version))
    }
    /// Compares the key's create revision (0 = the key does not exist).
    pub fn create_revision(key: impl Into<Vec<u8>>, op: CompareOp, rev: i64) -> Self {
        Self::new(key, op, pb::compare::TargetUnion::CreateRevision(rev))
    }
    /// Compares the key's mod revision.
    pub fn mod_revision(key: impl Into<Vec<u8>>, op: CompareOp, rev: i64) -> Self {
        Self::new(key, op, pb::compare::TargetUnion::ModRevision(rev))
    }
    /// Compares the key's lease.
    pub fn lease(key: impl Into<Vec<u8>>, op: CompareOp, lease: i64) -> Self {
        Self::new(key, op, pb::compare::TargetUnion::Lease(lease))
    }
    /// Applies the compare to every key with the key as prefix.
    pub fn with_prefix(mut self) -> Self {
        self.0.range_end = prefix_end(&self.0.key);
        self
    }
}

/// One operation of a txn branch.
#[derive(Debug, Clone, PartialEq)]
pub struct TxnOp(pb::RequestOp);

impl TxnOp {
    /// A put.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Self::put_with_lease(key, value, 0)
    }
    /// A put attached to `lease`.
    pub fn put_with_lease(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: i64) -> Self {
        TxnOp(pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: key.into(),
                value: value.into(),
                lease,
                ..Default::default()
            })),
        })
    }
    /// A read.
    pub fn get(key: impl Into<Vec<u8>>, opts: GetOptions) -> Self {
        TxnOp(pb::RequestOp {
            request: Some(pb::request_op::Request::RequestRange(
                opts.to_pb(key.into(), false),
            )),
        })
    }
    /// A delete of one key, or of every key with the prefix.
    pub fn delete(key: impl Into<Vec<u8>>, prefix: bool) -> Self {
        let key = key.into();
        let range_end = if prefix { prefix_end(&key) } else { Vec::new() };
        TxnOp(pb::RequestOp {
            request: Some(pb::request_op::Request::RequestDeleteRange(
                pb::DeleteRangeRequest {
                    key,
                    range_end,
                    prev_kv: false,
                },
            )),
        })
    }

    fn writes(&self) -> bool {
        !matches!(
            self.0.request,
            Some(pb::request_op::Request::RequestRange(_)) | None
        )
    }
}

/// One op's result, in branch order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOpResponse {
    Get {
        kvs: Vec<KeyValue>,
        count: i64,
    },
    Put {
        prev_kv: Option<KeyValue>,
    },
    Delete {
        deleted: i64,
    },
    /// A nested txn's result (only from txns built elsewhere).
    Txn {
        succeeded: bool,
    },
}

/// A txn's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    pub revision: i64,
    /// Whether every compare held (the success branch ran).
    pub succeeded: bool,
    pub responses: Vec<TxnOpResponse>,
}

/// A transaction under construction; see [`Client::txn`].
#[derive(Debug, Clone)]
pub struct Txn {
    client: Client,
    req: pb::TxnRequest,
    read_only: bool,
}

impl Client {
    /// Starts a transaction.
    ///
    /// ```no_run
    /// # async fn f(client: muster_client::Client) -> Result<(), muster_client::ClientError> {
    /// use muster_client::{Compare, CompareOp, TxnOp};
    /// let r = client
    ///     .txn()
    ///     .when([Compare::version("lock", CompareOp::Equal, 0)])
    ///     .and_then([TxnOp::put("lock", "me")])
    ///     .commit()
    ///     .await?;
    /// println!("acquired: {}", r.succeeded);
    /// # Ok(()) }
    /// ```
    pub fn txn(&self) -> Txn {
        Txn {
            client: self.clone(),
            req: pb::TxnRequest::default(),
            read_only: true,
        }
    }
}

impl Txn {
    /// Adds compares (all must hold for the success branch).
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.req.compare.extend(compares.into_iter().map(|c| c.0));
        self
    }
    /// Adds ops to the success branch.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        for op in ops {
            self.read_only &= !op.writes();
            self.req.success.push(op.0);
        }
        self
    }
    /// Adds ops to the failure branch.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        for op in ops {
            self.read_only &= !op.writes();
            self.req.failure.push(op.0);
        }
        self
    }

    /// Sends the transaction.
    ///
    /// # Errors
    /// Any [`ClientError`]. A txn that writes is not repeated after an unknown outcome: the
    /// error then has [`ClientError::outcome_unknown`] set.
    pub async fn commit(self) -> Result<TxnResponse, ClientError> {
        let spec = if self.read_only {
            CallSpec::read("txn")
        } else {
            CallSpec::write("txn", crate::kv::overwrite())
        };
        let req = self.req;
        self.client
            .call(spec, |a| {
                let req = req.clone();
                async move {
                    let r = KvClient::new(a.channel.clone())
                        .txn(a.request(req))
                        .await
                        .map_err(|s| a.status(s))?
                        .into_inner();
                    Ok(TxnResponse {
                        revision: revision(r.header.as_ref()),
                        succeeded: r.succeeded,
                        responses: r.responses.into_iter().filter_map(op_response).collect(),
                    })
                }
            })
            .await
    }
}

fn op_response(r: pb::ResponseOp) -> Option<TxnOpResponse> {
    use pb::response_op::Response as R;
    Some(match r.response? {
        R::ResponseRange(g) => TxnOpResponse::Get {
            kvs: g.kvs,
            count: g.count,
        },
        R::ResponsePut(p) => TxnOpResponse::Put { prev_kv: p.prev_kv },
        R::ResponseDeleteRange(d) => TxnOpResponse::Delete { deleted: d.deleted },
        R::ResponseTxn(t) => TxnOpResponse::Txn {
            succeeded: t.succeeded,
        },
    })
}
