//! The KV API: get / range with options, put, delete, compact (the txn builder is in `txn.rs`).
//!
//! Exactly-once: every write carries a request id (metadata `x-muster-request-id`, the same on
//! every attempt of one call) and the server's applier de-duplicates it, so Put, DeleteRange,
//! Txn and Compact are retried after an unknown outcome and still apply once
//! ([`KV_WRITES_DEDUPED`]).

use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::kv_client::KvClient;
use muster_proto::mvccpb::KeyValue;

use crate::client::Client;
use crate::error::ClientError;
use crate::retry::{CallSpec, Safety};

/// Whether the server de-duplicates KV writes by request id (the KV service wraps Put,
/// DeleteRange, Txn and Compact in the applier's `Command::Idempotent`).
pub const KV_WRITES_DEDUPED: bool = true;

/// The safety class of an overwrite (Put, DeleteRange, registry writes).
pub(crate) fn overwrite() -> Safety {
    if KV_WRITES_DEDUPED {
        Safety::Deduped
    } else {
        Safety::Overwrite
    }
}

/// The end of the range of every key starting with `prefix` (etcd's convention: `"\0"` when
/// the prefix is empty or all `0xff`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Sort order of a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortOrder {
    Ascend,
    Descend,
}

/// What a range is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortTarget {
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// Options of a range read. Build with the `with_*` methods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GetOptions {
    range_end: Vec<u8>,
    prefix: bool,
    from_key: bool,
    limit: i64,
    revision: i64,
    serializable: Option<bool>,
    keys_only: bool,
    count_only: bool,
    sort: Option<(SortTarget, SortOrder)>,
}

impl GetOptions {
    pub fn new() -> Self {
        Self::default()
    }
    /// Every key starting with the key.
    pub fn with_prefix(mut self) -> Self {
        self.prefix = true;
        self
    }
    /// Every key ≥ the key.
    pub fn with_from_key(mut self) -> Self {
        self.from_key = true;
        self
    }
    /// The half-open range `[key, end)`.
    pub fn with_range_end(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.range_end = end.into();
        self
    }
    /// At most `n` keys (0 = no limit).
    pub fn with_limit(mut self, n: i64) -> Self {
        self.limit = n;
        self
    }
    /// Read at `rev` (≤ 0 = latest).
    pub fn with_revision(mut self, rev: i64) -> Self {
        self.revision = rev;
        self
    }
    /// Serve from any node's replica without the read-index round trip (may be stale).
    pub fn with_serializable(mut self, yes: bool) -> Self {
        self.serializable = Some(yes);
        self
    }
    pub fn with_keys_only(mut self) -> Self {
        self.keys_only = true;
        self
    }
    pub fn with_count_only(mut self) -> Self {
        self.count_only = true;
        self
    }
    pub fn with_sort(mut self, target: SortTarget, order: SortOrder) -> Self {
        self.sort = Some((target, order));
        self
    }

    pub(crate) fn to_pb(&self, key: Vec<u8>, default_serializable: bool) -> pb::RangeRequest {
        let range_end = if self.prefix {
            prefix_end(&key)
        } else if self.from_key {
            vec![0]
        } else {
            self.range_end.clone()
        };
        let (sort_target, sort_order) = match self.sort {
            None => (0, 0),
            Some((t, o)) => (
                match t {
                    SortTarget::Key => 0,
                    SortTarget::Version => 1,
                    SortTarget::Create => 2,
                    SortTarget::Mod => 3,
                    SortTarget::Value => 4,
                },
                match o {
                    SortOrder::Ascend => 1,
                    SortOrder::Descend => 2,
                },
            ),
        };
        pb::RangeRequest {
            key,
            range_end,
            limit: self.limit,
            revision: self.revision,
            sort_order,
            sort_target,
            serializable: self.serializable.unwrap_or(default_serializable),
            keys_only: self.keys_only,
            count_only: self.count_only,
            ..Default::default()
        }
    }
}

/// A range's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetResponse {
    /// The store revision the read was served at.
    pub revision: i64,
    pub kvs: Vec<KeyValue>,
    /// More keys matched than `limit` returned.
    pub more: bool,
    /// How many keys matched.
    pub count: i64,
}

/// Options of a put.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Attach to this lease (0 = none).
    pub lease: i64,
    /// Return the previous key-value.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
}

/// A put's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutResponse {
    pub revision: i64,
    pub prev_kv: Option<KeyValue>,
}

/// Options of a delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// Every key starting with the key.
    pub prefix: bool,
    /// The half-open range `[key, range_end)` (ignored with `prefix`).
    pub range_end: Vec<u8>,
    /// Return the deleted key-values.
    pub prev_kv: bool,
}

/// A delete's result. After a retry with an unknown first outcome `deleted` may be 0 although
/// the first attempt deleted the keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteResponse {
    pub revision: i64,
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

pub(crate) fn revision(h: Option<&pb::ResponseHeader>) -> i64 {
    h.map_or(0, |h| h.revision)
}

impl Client {
    /// Reads one key (linearizable unless the options say serializable).
    ///
    /// ```no_run
    /// # async fn f(client: muster_client::Client) -> Result<(), muster_client::ClientError> {
    /// let r = client.get("config/feature-x").await?;
    /// if let Some(kv) = r.kvs.first() {
    ///     println!("{}", String::from_utf8_lossy(&kv.value));
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// Any [`ClientError`] once the retry loop gives up; [`ClientError::Compacted`] for a
    /// compacted revision.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<GetResponse, ClientError> {
        self.range(key, GetOptions::new()).await
    }

    /// Reads a key or range with options.
    ///
    /// ```no_run
    /// # async fn f(client: muster_client::Client) -> Result<(), muster_client::ClientError> {
    /// use muster_client::GetOptions;
    /// let r = client.range("jobs/", GetOptions::new().with_prefix().with_limit(100)).await?;
    /// println!("{} of {} keys at revision {}", r.kvs.len(), r.count, r.revision);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::get`].
    pub async fn range(
        &self,
        key: impl Into<Vec<u8>>,
        opts: GetOptions,
    ) -> Result<GetResponse, ClientError> {
        let req = opts.to_pb(key.into(), self.options().serializable_reads);
        self.call(CallSpec::read("range"), |a| {
            let req = req.clone();
            async move {
                let r = KvClient::new(a.channel.clone())
                    .range(a.request(req))
                    .await
                    .map_err(|s| a.status(s))?
                    .into_inner();
                Ok(GetResponse {
                    revision: revision(r.header.as_ref()),
                    kvs: r.kvs,
                    more: r.more,
                    count: r.count,
                })
            }
        })
        .await
    }

    /// Writes `key` = `value`.
    ///
    /// # Errors
    /// Any [`ClientError`]; an outcome-unknown error only when `retry_overwrites` is off.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<PutResponse, ClientError> {
        self.put_with(key, value, PutOptions::default()).await
    }

    /// Writes `key` = `value` with options (lease, prev_kv, ignore_value, ignore_lease).
    ///
    /// # Errors
    /// As [`Client::put`]; [`ClientError::LeaseNotFound`] for an unknown lease.
    pub async fn put_with(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        opts: PutOptions,
    ) -> Result<PutResponse, ClientError> {
        let req = pb::PutRequest {
            key: key.into(),
            value: value.into(),
            lease: opts.lease,
            prev_kv: opts.prev_kv,
            ignore_value: opts.ignore_value,
            ignore_lease: opts.ignore_lease,
        };
        let lease = opts.lease;
        self.call(CallSpec::write("put", overwrite()), |a| {
            let req = req.clone();
            async move {
                let r = KvClient::new(a.channel.clone())
                    .put(a.request(req))
                    .await
                    .map_err(|s| a.status(s).with_lease(lease))?
                    .into_inner();
                Ok(PutResponse {
                    revision: revision(r.header.as_ref()),
                    prev_kv: r.prev_kv,
                })
            }
        })
        .await
    }

    /// Deletes a key or range.
    ///
    /// # Errors
    /// Any [`ClientError`]; an outcome-unknown error only when `retry_overwrites` is off.
    pub async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
        opts: DeleteOptions,
    ) -> Result<DeleteResponse, ClientError> {
        let key = key.into();
        let range_end = if opts.prefix {
            prefix_end(&key)
        } else {
            opts.range_end.clone()
        };
        let req = pb::DeleteRangeRequest {
            key,
            range_end,
            prev_kv: opts.prev_kv,
        };
        self.call(CallSpec::write("delete", overwrite()), |a| {
            let req = req.clone();
            async move {
                let r = KvClient::new(a.channel.clone())
                    .delete_range(a.request(req))
                    .await
                    .map_err(|s| a.status(s))?
                    .into_inner();
                Ok(DeleteResponse {
                    revision: revision(r.header.as_ref()),
                    deleted: r.deleted,
                    prev_kvs: r.prev_kvs,
                })
            }
        })
        .await
    }

    /// Discards history below `revision`; returns the store revision.
    ///
    /// # Errors
    /// Any [`ClientError`] ([`ClientError::Compacted`] when already compacted that far).
    /// Not repeated after an unknown outcome.
    pub async fn compact(&self, revision: i64) -> Result<i64, ClientError> {
        self.call(CallSpec::write("compact", overwrite()), |a| async move {
            let r = KvClient::new(a.channel.clone())
                .compact(a.request(pb::CompactionRequest {
                    revision,
                    physical: false,
                }))
                .await
                .map_err(|s| a.status(s))?
                .into_inner();
            Ok(crate::kv::revision(r.header.as_ref()))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_follows_etcd() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b""), vec![0]);
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
