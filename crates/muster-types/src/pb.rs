//! Conversions between the etcd v3 wire messages (`muster-proto`) and the domain types.
//! Requests convert fallibly (unknown enum values are InvalidArgument); responses infallibly.

use muster_proto::etcdserverpb as pb;
use muster_proto::mvccpb;

use crate::command::*;
use crate::error::ValidationError;
use crate::kv::{Event, EventKind, KeyRange, KeyValue};
use crate::response::*;

fn bad(field: &'static str, reason: impl Into<String>) -> ValidationError {
    ValidationError::InvalidArgument {
        field,
        reason: reason.into(),
    }
}

impl From<KeyValue> for mvccpb::KeyValue {
    fn from(kv: KeyValue) -> Self {
        mvccpb::KeyValue {
            key: kv.key,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            value: kv.value,
            lease: kv.lease,
        }
    }
}

impl From<Event> for mvccpb::Event {
    fn from(e: Event) -> Self {
        let r#type = match e.kind {
            EventKind::Put => mvccpb::event::EventType::Put,
            EventKind::Delete => mvccpb::event::EventType::Delete,
        };
        mvccpb::Event {
            r#type: r#type as i32,
            kv: Some(e.kv.into()),
            prev_kv: e.prev_kv.map(Into::into),
        }
    }
}

impl TryFrom<pb::RangeRequest> for RangeRequest {
    type Error = ValidationError;
    fn try_from(r: pb::RangeRequest) -> Result<Self, ValidationError> {
        use pb::range_request::{SortOrder as O, SortTarget as T};
        let sort_order =
            match O::try_from(r.sort_order).map_err(|_| bad("sort_order", "unknown value"))? {
                O::None => SortOrder::None,
                O::Ascend => SortOrder::Ascend,
                O::Descend => SortOrder::Descend,
            };
        let sort_target =
            match T::try_from(r.sort_target).map_err(|_| bad("sort_target", "unknown value"))? {
                T::Key => SortTarget::Key,
                T::Version => SortTarget::Version,
                T::Create => SortTarget::Create,
                T::Mod => SortTarget::Mod,
                T::Value => SortTarget::Value,
            };
        Ok(RangeRequest {
            range: KeyRange {
                key: r.key,
                range_end: r.range_end,
            },
            // etcd reads a negative limit as no limit.
            limit: r.limit.max(0),
            revision: r.revision,
            sort_order,
            sort_target,
            serializable: r.serializable,
            keys_only: r.keys_only,
            count_only: r.count_only,
            min_mod_revision: r.min_mod_revision,
            max_mod_revision: r.max_mod_revision,
            min_create_revision: r.min_create_revision,
            max_create_revision: r.max_create_revision,
        })
    }
}

impl From<pb::PutRequest> for PutRequest {
    fn from(p: pb::PutRequest) -> Self {
        PutRequest {
            key: p.key,
            value: p.value,
            lease: p.lease,
            prev_kv: p.prev_kv,
            ignore_value: p.ignore_value,
            ignore_lease: p.ignore_lease,
        }
    }
}

impl From<pb::DeleteRangeRequest> for DeleteRangeRequest {
    fn from(d: pb::DeleteRangeRequest) -> Self {
        DeleteRangeRequest {
            range: KeyRange {
                key: d.key,
                range_end: d.range_end,
            },
            prev_kv: d.prev_kv,
        }
    }
}

impl TryFrom<pb::Compare> for Compare {
    type Error = ValidationError;
    fn try_from(c: pb::Compare) -> Result<Self, ValidationError> {
        use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
        let result =
            match R::try_from(c.result).map_err(|_| bad("compare.result", "unknown value"))? {
                R::Equal => CompareResult::Equal,
                R::Greater => CompareResult::Greater,
                R::Less => CompareResult::Less,
                R::NotEqual => CompareResult::NotEqual,
            };
        let declared = T::try_from(c.target).map_err(|_| bad("compare.target", "unknown value"))?;
        // etcd reads the operand from the union member named by `target`; a missing member is
        // the zero value of that member.
        let target = match (declared, c.target_union) {
            (T::Version, Some(U::Version(v))) => CompareTarget::Version(v),
            (T::Version, None) => CompareTarget::Version(0),
            (T::Create, Some(U::CreateRevision(v))) => CompareTarget::Create(v),
            (T::Create, None) => CompareTarget::Create(0),
            (T::Mod, Some(U::ModRevision(v))) => CompareTarget::Mod(v),
            (T::Mod, None) => CompareTarget::Mod(0),
            (T::Value, Some(U::Value(v))) => CompareTarget::Value(v),
            (T::Value, None) => CompareTarget::Value(Vec::new()),
            (T::Lease, Some(U::Lease(v))) => CompareTarget::Lease(v),
            (T::Lease, None) => CompareTarget::Lease(0),
            (t, Some(_)) => {
                return Err(bad(
                    "compare.target_union",
                    format!("does not match target {t:?}"),
                ))
            }
        };
        Ok(Compare {
            result,
            target,
            range: KeyRange {
                key: c.key,
                range_end: c.range_end,
            },
        })
    }
}

impl TryFrom<pb::RequestOp> for TxnOp {
    type Error = ValidationError;
    fn try_from(op: pb::RequestOp) -> Result<Self, ValidationError> {
        use pb::request_op::Request;
        match op.request {
            Some(Request::RequestRange(r)) => Ok(TxnOp::Range(r.try_into()?)),
            Some(Request::RequestPut(p)) => Ok(TxnOp::Put(p.into())),
            Some(Request::RequestDeleteRange(d)) => Ok(TxnOp::DeleteRange(d.into())),
            Some(Request::RequestTxn(t)) => Ok(TxnOp::Txn(t.try_into()?)),
            None => Err(bad("request_op", "empty operation")),
        }
    }
}

impl TryFrom<pb::TxnRequest> for TxnRequest {
    type Error = ValidationError;
    fn try_from(t: pb::TxnRequest) -> Result<Self, ValidationError> {
        Ok(TxnRequest {
            compare: t
                .compare
                .into_iter()
                .map(Compare::try_from)
                .collect::<Result<_, _>>()?,
            success: t
                .success
                .into_iter()
                .map(TxnOp::try_from)
                .collect::<Result<_, _>>()?,
            failure: t
                .failure
                .into_iter()
                .map(TxnOp::try_from)
                .collect::<Result<_, _>>()?,
        })
    }
}

/// Builds a response header; the server fills every field.
pub fn header(
    cluster_id: u64,
    member_id: u64,
    revision: i64,
    raft_term: u64,
) -> pb::ResponseHeader {
    pb::ResponseHeader {
        cluster_id,
        member_id,
        revision,
        raft_term,
    }
}

/// Response conversions take the header to embed (nested txn responses carry one too).
pub trait IntoPb {
    type Pb;
    fn into_pb(self, header: &pb::ResponseHeader) -> Self::Pb;
}

impl IntoPb for RangeResponse {
    type Pb = pb::RangeResponse;
    fn into_pb(self, header: &pb::ResponseHeader) -> pb::RangeResponse {
        pb::RangeResponse {
            header: Some(*header),
            kvs: self.kvs.into_iter().map(Into::into).collect(),
            more: self.more,
            count: self.count,
        }
    }
}

impl IntoPb for PutResponse {
    type Pb = pb::PutResponse;
    fn into_pb(self, header: &pb::ResponseHeader) -> pb::PutResponse {
        pb::PutResponse {
            header: Some(*header),
            prev_kv: self.prev_kv.map(Into::into),
        }
    }
}

impl IntoPb for DeleteRangeResponse {
    type Pb = pb::DeleteRangeResponse;
    fn into_pb(self, header: &pb::ResponseHeader) -> pb::DeleteRangeResponse {
        pb::DeleteRangeResponse {
            header: Some(*header),
            deleted: self.deleted,
            prev_kvs: self.prev_kvs.into_iter().map(Into::into).collect(),
        }
    }
}

impl IntoPb for TxnResponse {
    type Pb = pb::TxnResponse;
    fn into_pb(self, header: &pb::ResponseHeader) -> pb::TxnResponse {
        use pb::response_op::Response;
        let responses = self
            .responses
            .into_iter()
            .map(|r| pb::ResponseOp {
                response: Some(match r {
                    TxnOpResponse::Range(r) => Response::ResponseRange(r.into_pb(header)),
                    TxnOpResponse::Put(r) => Response::ResponsePut(r.into_pb(header)),
                    TxnOpResponse::DeleteRange(r) => {
                        Response::ResponseDeleteRange(r.into_pb(header))
                    }
                    TxnOpResponse::Txn(r) => Response::ResponseTxn(r.into_pb(header)),
                }),
            })
            .collect();
        pb::TxnResponse {
            header: Some(*header),
            succeeded: self.succeeded,
            responses,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_reads_the_named_union_member() {
        use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
        let c = pb::Compare {
            result: R::Equal as i32,
            target: T::Create as i32,
            key: b"k".to_vec(),
            target_union: Some(U::CreateRevision(0)),
            range_end: vec![],
        };
        let d = Compare::try_from(c).expect("valid compare");
        assert_eq!(d.target, CompareTarget::Create(0));
        let c = pb::Compare {
            result: R::Equal as i32,
            target: T::Value as i32,
            key: b"k".to_vec(),
            target_union: Some(U::Version(1)),
            range_end: vec![],
        };
        assert!(Compare::try_from(c).is_err());
    }

    #[test]
    fn rejects_unknown_sort_order() {
        let r = pb::RangeRequest {
            key: b"k".to_vec(),
            sort_order: 9,
            ..Default::default()
        };
        assert!(RangeRequest::try_from(r).is_err());
    }

    #[test]
    fn nested_txn_response_converts() {
        let h = header(1, 2, 3, 4);
        let t = TxnResponse {
            succeeded: true,
            responses: vec![TxnOpResponse::Txn(TxnResponse {
                succeeded: false,
                responses: vec![TxnOpResponse::Put(PutResponse::default())],
            })],
        };
        let p = t.into_pb(&h);
        assert!(p.succeeded);
        assert_eq!(p.header.map(|h| h.revision), Some(3));
        assert_eq!(p.responses.len(), 1);
    }
}
