//! Generated protobuf and gRPC code for Muster.
//!
//! This crate owns the wire format and nothing else: `build.rs` compiles the
//! workspace's `proto/` tree with prost + tonic (server and client stubs), and
//! this file exposes the result. Conversions to domain types live in
//! `muster-types`; service implementations live in `muster-server`.
//!
//! # Layout
//!
//! - [`mvccpb`] — `proto/etcd/mvccpb/kv.proto`: etcd's `KeyValue` and watch `Event`.
//! - [`authpb`] — `proto/etcd/authpb/auth.proto`: etcd's `User`, `Permission`, `Role`.
//! - [`etcdserverpb`] — `proto/etcd/etcdserverpb/rpc.proto`: the etcd v3.5 client API
//!   (services KV, Watch, Lease, Cluster, Maintenance, Auth), wire-compatible with etcd.
//! - [`registrypb`] — `proto/muster/v1/registry.proto` (package `muster.v1`): Muster's
//!   service registry (Register, Deregister, Update, Discover, ListServices, Subscribe).
//! - [`raftpb`] — `proto/muster/raft/v1/raft.proto` (package `muster.raft.v1`): the
//!   internal node-to-node `RaftTransport`, whose payloads are bincode-encoded
//!   openraft/Muster types.
//!
//! Each generated service `Foo` yields `foo_server::{Foo, FooServer}` (trait +
//! tower service) and `foo_client::FooClient`.

// The etcd packages refer to each other as `super::mvccpb` / `super::authpb`,
// so these modules must stay siblings at the crate root.

/// etcd `mvccpb`: stored key-values and watch events.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd `authpb`: users, roles and permissions.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// etcd `etcdserverpb`: the v3.5 client API services and messages.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// `muster.v1`: Muster's own API (the service registry).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod registrypb {
    tonic::include_proto!("muster.v1");
}

/// `muster.raft.v1`: Muster's internal Raft transport.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod raftpb {
    tonic::include_proto!("muster.raft.v1");
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use crate::etcdserverpb::{RangeResponse, ResponseHeader};
    use crate::mvccpb::KeyValue;

    #[test]
    fn range_response_round_trips() {
        let resp = RangeResponse {
            header: Some(ResponseHeader {
                revision: 7,
                ..Default::default()
            }),
            kvs: vec![KeyValue {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                version: 1,
                ..Default::default()
            }],
            more: false,
            count: 42,
        };
        let bytes = resp.encode_to_vec();
        let decoded = RangeResponse::decode(bytes.as_slice()).expect("decode RangeResponse");
        assert_eq!(decoded, resp);
        assert_eq!(decoded.count, 42);
    }

    #[test]
    fn response_header_revision_is_field_3() {
        let header = ResponseHeader {
            revision: 5,
            ..Default::default()
        };
        // Tag = (field 3 << 3) | wire type 0 (varint) = 0x18, then the varint 5.
        assert_eq!(header.encode_to_vec(), vec![0x18, 0x05]);
    }

    #[test]
    fn range_response_count_is_field_4() {
        let resp = RangeResponse {
            count: 3,
            ..Default::default()
        };
        // Tag = (field 4 << 3) | 0 = 0x20.
        assert_eq!(resp.encode_to_vec(), vec![0x20, 0x03]);
    }
}
