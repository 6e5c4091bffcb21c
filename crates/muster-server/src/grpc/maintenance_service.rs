//! etcd `Maintenance` service: Status and Alarm (as `etcdctl endpoint status|health` use
//! them), HashKV and Hash (`etcdctl endpoint hashkv`), MoveLeader (`etcdctl move-leader`) and
//! Defragment (a no-op on sled) — decode, call `crate::services::maintenance`, encode. Snapshot
//! and Downgrade are Unimplemented.

use openraft::async_runtime::watch::WatchReceiver;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::maintenance_server::Maintenance;
use tonic::{Request, Response, Status};

use crate::error::ServerError;
use crate::node::Node;
use crate::services::maintenance as svc;

/// The etcd API version Muster speaks; etcdctl prints it in `endpoint status`.
pub const ETCD_API_VERSION: &str = "3.5.0";

pub struct MaintenanceService {
    pub node: Arc<Node>,
    pub maintenance: svc::Maintenance,
}

fn unsupported(what: &'static str) -> Status {
    ServerError::Unsupported { what }.into()
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        req: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        if req.get_ref().action != pb::alarm_request::AlarmAction::Get as i32 {
            return Err(unsupported("alarm activate/deactivate"));
        }
        let revision = self.node.sm.read().mvcc.current_revision();
        // Muster raises no alarms (no space quota yet): GET reports none.
        Ok(Response::new(pb::AlarmResponse {
            header: Some(self.node.header(revision)),
            alarms: vec![],
        }))
    }

    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let m = self.node.raft.metrics().borrow_watched().clone();
        let revision = self.node.sm.read().mvcc.current_revision();
        let db_size = self.node.db.size_on_disk().unwrap_or(0) as i64;
        let is_learner = !m
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == self.node.id);
        let mut errors = Vec::new();
        if m.current_leader.is_none() {
            errors.push("etcdserver: no leader".to_string());
        }
        Ok(Response::new(pb::StatusResponse {
            header: Some(self.node.header(revision)),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader: m.current_leader.unwrap_or(0),
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            errors,
            db_size_in_use: db_size,
            is_learner,
        }))
    }

    async fn defragment(
        &self,
        _: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        let revision = self.node.sm.read().mvcc.current_revision();
        Ok(Response::new(pb::DefragmentResponse {
            header: Some(self.node.header(revision)),
        }))
    }

    async fn hash(
        &self,
        _: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        // etcd hashes its whole backend file; Muster's nearest equivalent is the keyspace at
        // the current revision (the same hash as HashKV at revision 0).
        let h = self.maintenance.hash_kv(0)?;
        Ok(Response::new(pb::HashResponse {
            header: Some(self.node.header(h.current_revision)),
            hash: h.hash,
        }))
    }

    async fn hash_kv(
        &self,
        req: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let h = self.maintenance.hash_kv(req.into_inner().revision)?;
        Ok(Response::new(pb::HashKvResponse {
            header: Some(self.node.header(h.current_revision)),
            hash: h.hash,
            compact_revision: h.compact_revision,
            hash_revision: h.revision,
        }))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

    async fn snapshot(
        &self,
        _: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(unsupported("snapshot"))
    }

    async fn move_leader(
        &self,
        req: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        self.maintenance
            .move_leader(req.into_inner().target_id)
            .await?;
        let revision = self.node.sm.read().mvcc.current_revision();
        Ok(Response::new(pb::MoveLeaderResponse {
            header: Some(self.node.header(revision)),
        }))
    }

    async fn downgrade(
        &self,
        _: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(unsupported("downgrade"))
    }
}
