//! etcd `Maintenance` service: Status, Alarm (GET, ACTIVATE, DEACTIVATE: `etcdctl alarm
//! list|disarm`, `endpoint status|health`), Snapshot (`etcdctl snapshot save`: a Muster
//! backup, see `muster_store::raft::state_machine::backup`), HashKV and Hash (`etcdctl
//! endpoint hashkv`), MoveLeader (`etcdctl move-leader`) and Defragment (a no-op on sled) —
//! decode, call `crate::services::maintenance`, encode. Downgrade is Unimplemented.

use openraft::async_runtime::watch::WatchReceiver;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::maintenance_server::Maintenance;
use muster_types::{Alarm, AlarmAction, AlarmMember};
use tonic::{Request, Response, Status};

use crate::error::ServerError;
use crate::node::Node;
use crate::services::maintenance as svc;

/// The etcd API version Muster speaks; etcdctl prints it in `endpoint status`.
pub const ETCD_API_VERSION: &str = "3.5.0";

/// Bytes per Snapshot message (etcd sends 32 KiB).
const SNAPSHOT_CHUNK_BYTES: usize = 64 * 1024;

pub struct MaintenanceService {
    pub node: Arc<Node>,
    pub maintenance: svc::Maintenance,
}

fn alarm_member(a: AlarmMember) -> pb::AlarmMember {
    let alarm = match a.alarm {
        Alarm::NoSpace => pb::AlarmType::Nospace,
        Alarm::Corrupt => pb::AlarmType::Corrupt,
    };
    pb::AlarmMember {
        member_id: a.member_id,
        alarm: alarm as i32,
    }
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
        use pb::alarm_request::AlarmAction as Action;
        let req = req.into_inner();
        let alarm = match pb::AlarmType::try_from(req.alarm) {
            Ok(pb::AlarmType::Nospace) => Some(Alarm::NoSpace),
            Ok(pb::AlarmType::Corrupt) => Some(Alarm::Corrupt),
            // NONE: etcd's "any" for GET; raising or clearing it changes nothing.
            _ => None,
        };
        let (revision, alarms) = match Action::try_from(req.action) {
            Ok(Action::Get) => self.maintenance.alarms(),
            Ok(Action::Activate) => {
                self.maintenance
                    .set_alarm(AlarmAction::Activate, req.member_id, alarm)
                    .await?
            }
            Ok(Action::Deactivate) => {
                self.maintenance
                    .set_alarm(AlarmAction::Deactivate, req.member_id, alarm)
                    .await?
            }
            Err(_) => return Err(Status::invalid_argument("etcdserver: unknown alarm action")),
        };
        Ok(Response::new(pb::AlarmResponse {
            header: Some(self.node.header(revision)),
            alarms: alarms.into_iter().map(alarm_member).collect(),
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
        // As etcd: each raised alarm in the protobuf text form `etcdctl endpoint status`
        // prints.
        let (_, alarms) = self.maintenance.alarms();
        errors.extend(
            alarms
                .iter()
                .map(|a| format!("memberID:{} alarm:{} ", a.member_id, a.alarm.name())),
        );
        Ok(Response::new(pb::StatusResponse {
            header: Some(self.node.header(revision)),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader: m.current_leader.unwrap_or(0),
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            errors,
            db_size_in_use: self.node.sm.read().mvcc.space_used() as i64,
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
        let h = self.maintenance.hash_kv(0).await?;
        Ok(Response::new(pb::HashResponse {
            header: Some(self.node.header(h.current_revision)),
            hash: h.hash,
        }))
    }

    async fn hash_kv(
        &self,
        req: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let h = self.maintenance.hash_kv(req.into_inner().revision).await?;
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
        let (bytes, summary) = self.maintenance.backup().await?;
        let header = self.node.header(summary.revision);
        let total = bytes.len();
        let chunks: Vec<Result<pb::SnapshotResponse, Status>> = bytes
            .chunks(SNAPSHOT_CHUNK_BYTES)
            .enumerate()
            .map(|(i, blob)| {
                let sent = i * SNAPSHOT_CHUNK_BYTES + blob.len();
                Ok(pb::SnapshotResponse {
                    header: Some(header),
                    remaining_bytes: (total - sent) as u64,
                    blob: blob.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
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
