//! etcd `KV` service over gRPC: Range, Put, DeleteRange, Txn, Compact — decode, call
//! `crate::services::kv`, encode.

use std::sync::Arc;

use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::kv_server::Kv;
use muster_types::pb::IntoPb;
use muster_types::{DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest};
use tonic::{Request, Response, Status};

use super::request_ctx;
use crate::error::ServerError;
use crate::node::Node;
use crate::services::kv as svc;

pub struct KvService {
    pub node: Arc<Node>,
    pub kv: svc::Kv,
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        req: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let req = RangeRequest::try_from(req.into_inner()).map_err(ServerError::from)?;
        let (rev, r) = self.kv.range(&req).await?;
        Ok(Response::new(r.into_pb(&self.node.header(rev))))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let ctx = request_ctx(&req)?;
        let (rev, p) = self
            .kv
            .put(PutRequest::from(req.into_inner()), &ctx)
            .await?;
        Ok(Response::new(p.into_pb(&self.node.header(rev))))
    }

    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let ctx = request_ctx(&req)?;
        let del = DeleteRangeRequest::from(req.into_inner());
        let (rev, d) = self.kv.delete_range(del, &ctx).await?;
        Ok(Response::new(d.into_pb(&self.node.header(rev))))
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let ctx = request_ctx(&req)?;
        let txn = TxnRequest::try_from(req.into_inner()).map_err(ServerError::from)?;
        let (rev, t) = self.kv.txn(txn, &ctx).await?;
        Ok(Response::new(t.into_pb(&self.node.header(rev))))
    }

    async fn compact(
        &self,
        req: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let ctx = request_ctx(&req)?;
        let rev = self.kv.compact(req.into_inner().revision, &ctx).await?;
        Ok(Response::new(pb::CompactionResponse {
            header: Some(self.node.header(rev)),
        }))
    }
}
