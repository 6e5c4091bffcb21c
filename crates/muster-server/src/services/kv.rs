//! The KV service: etcd's Range, Put, DeleteRange, Txn and Compact over domain requests.
//! Each answer carries the store revision it was served at (the etcd header's).

use std::sync::Arc;

use muster_types::{
    Command, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, ResponseBody, TxnRequest, TxnResponse,
};

use super::{body, unexpected, RequestCtx};
use crate::error::ServerError;
use crate::node::Node;

/// KV operations of one node.
#[derive(Clone)]
pub struct Kv {
    node: Arc<Node>,
}

impl Kv {
    pub fn new(node: Arc<Node>) -> Kv {
        Kv { node }
    }

    async fn write(
        &self,
        cmd: Command,
        ctx: &RequestCtx,
    ) -> Result<(i64, ResponseBody), ServerError> {
        body(self.node.write(ctx.idempotent(cmd)).await?)
    }

    /// A range read: linearizable unless `req.serializable`.
    pub async fn range(&self, req: &RangeRequest) -> Result<(i64, RangeResponse), ServerError> {
        let (resp, revision) = self.node.range(req).await?;
        Ok((revision, resp))
    }

    pub async fn put(
        &self,
        req: PutRequest,
        ctx: &RequestCtx,
    ) -> Result<(i64, PutResponse), ServerError> {
        match self.write(Command::Put(req), ctx).await? {
            (rev, ResponseBody::Put(p)) => Ok((rev, p)),
            _ => Err(unexpected("put")),
        }
    }

    pub async fn delete_range(
        &self,
        req: DeleteRangeRequest,
        ctx: &RequestCtx,
    ) -> Result<(i64, DeleteRangeResponse), ServerError> {
        match self.write(Command::DeleteRange(req), ctx).await? {
            (rev, ResponseBody::DeleteRange(d)) => Ok((rev, d)),
            _ => Err(unexpected("delete_range")),
        }
    }

    pub async fn txn(
        &self,
        req: TxnRequest,
        ctx: &RequestCtx,
    ) -> Result<(i64, TxnResponse), ServerError> {
        match self.write(Command::Txn(req), ctx).await? {
            (rev, ResponseBody::Txn(t)) => Ok((rev, t)),
            _ => Err(unexpected("txn")),
        }
    }

    /// Discards history below `revision`. Applied synchronously: when this returns, the
    /// history is gone (etcd's `physical` needs no separate wait).
    pub async fn compact(&self, revision: i64, ctx: &RequestCtx) -> Result<i64, ServerError> {
        match self.write(Command::Compact { revision }, ctx).await? {
            (rev, ResponseBody::Compact) => Ok(rev),
            _ => Err(unexpected("compact")),
        }
    }
}
