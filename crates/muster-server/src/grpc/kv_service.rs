//! etcd `KV` service: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;

use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::kv_server::Kv;
use muster_types::pb::IntoPb;
use muster_types::{
    Command, DeleteRangeRequest, PutRequest, RangeRequest, ResponseBody, TxnRequest,
};
use tonic::{Request, Response, Status};

use super::{body, idempotent, request_id};
use crate::error::ServerError;
use crate::node::Node;

pub struct KvService {
    pub node: Arc<Node>,
}

impl KvService {
    /// Validates and proposes a write; with a client request id the applier de-duplicates it.
    async fn propose(
        &self,
        cmd: Command,
        request_id: Option<String>,
    ) -> Result<(i64, ResponseBody), ServerError> {
        body(self.node.write(idempotent(cmd, request_id)).await?)
    }

    async fn do_range(&self, req: pb::RangeRequest) -> Result<pb::RangeResponse, ServerError> {
        let (resp, revision) = self.node.range(&RangeRequest::try_from(req)?).await?;
        Ok(resp.into_pb(&self.node.header(revision)))
    }
}

fn unexpected(what: &'static str) -> ServerError {
    ServerError::UnexpectedResponse { expected: what }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        req: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        Ok(Response::new(self.do_range(req.into_inner()).await?))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let rid = request_id(&req)?;
        let cmd = Command::Put(PutRequest::from(req.into_inner()));
        match self.propose(cmd, rid).await? {
            (rev, ResponseBody::Put(p)) => Ok(Response::new(p.into_pb(&self.node.header(rev)))),
            _ => Err(unexpected("put").into()),
        }
    }

    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let rid = request_id(&req)?;
        let cmd = Command::DeleteRange(DeleteRangeRequest::from(req.into_inner()));
        match self.propose(cmd, rid).await? {
            (rev, ResponseBody::DeleteRange(d)) => {
                Ok(Response::new(d.into_pb(&self.node.header(rev))))
            }
            _ => Err(unexpected("delete_range").into()),
        }
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let rid = request_id(&req)?;
        let txn = TxnRequest::try_from(req.into_inner()).map_err(ServerError::from)?;
        match self.propose(Command::Txn(txn), rid).await? {
            (rev, ResponseBody::Txn(t)) => Ok(Response::new(t.into_pb(&self.node.header(rev)))),
            _ => Err(unexpected("txn").into()),
        }
    }

    async fn compact(
        &self,
        req: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        // Compaction is applied synchronously, so `physical` needs no separate wait.
        let rid = request_id(&req)?;
        let cmd = Command::Compact {
            revision: req.into_inner().revision,
        };
        match self.propose(cmd, rid).await? {
            (rev, ResponseBody::Compact) => Ok(Response::new(pb::CompactionResponse {
                header: Some(self.node.header(rev)),
            })),
            _ => Err(unexpected("compact").into()),
        }
    }
}
