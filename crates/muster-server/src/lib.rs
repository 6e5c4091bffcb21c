//! `musterd`: one Muster node — Raft over sled, the etcd v3 API and Muster's own services on
//! the client port, Raft between nodes on the peer port, HTTP health and metrics on a third.
//!
//! Layout (one step of the data path per file):
//! - [`admission`]: the client port's global concurrency bound and the client's deadline.
//! - [`config`]: [`config::NodeConfig`], defaults and validation.
//! - [`conn`]: accepted connections that are cut when the node stops.
//! - [`server`]: binds ports, starts the node, serves every service.
//! - [`node`]: opens storage and Raft, bootstraps the cluster; the handles services use.
//! - [`read`]: the read path (read-index barrier, then the local state machine).
//! - [`propose`]: proposal batching, the one door into the local Raft.
//! - [`route`]: the one routing loop (here if leader, else one hop, else wait for a leader).
//! - [`write`]: the write path (leader or one-hop forward) and the linearizable-read barrier.
//! - [`lease_keeper`]: leader-only lease deadlines, the expiry reaper, lease operations.
//! - [`compactor`]: auto-compaction, proposed by the leader on a schedule.
//! - [`corruption`]: the leader's periodic comparison of members' keyspace hashes (CORRUPT).
//! - [`membership`]: member add/promote/remove on the leader (forwarded from followers).
//! - [`network`]: the Raft network, client side (peer channels, bincode payloads).
//! - [`faults`]: fault injection on peer calls (block, black-hole, delay, drop), for tests.
//! - [`peer_auth`]: the peer secret: attached to every peer call, checked on the peer port.
//! - [`pki`]: throw-away CA and certificates for local clusters and tests (rcgen).
//! - [`tls`]: TLS for both ports (rustls), etcd's flags, certificates reloaded live.
//! - [`services`]: the service layer (kv, lease, registry, cluster) every front door calls.
//! - [`grpc`]: one file per gRPC service: decode, call a service, encode.
//! - [`error`]: the server's errors and their single mapping to gRPC status.
//! - [`http`]: /health, /ready, /metrics.

pub mod admission;
pub mod compactor;
pub mod config;
pub mod conn;
pub mod corruption;
pub mod error;
pub mod faults;
mod forward_stream;
pub mod grpc;
pub mod http;
pub mod lease_keeper;
pub mod membership;
pub mod network;
pub mod node;
pub mod peer_auth;
pub mod pki;
pub mod propose;
pub mod read;
pub mod route;
pub mod server;
pub mod services;
pub mod tls;
mod tls_connect;
pub mod write;

pub use config::NodeConfig;
pub use server::{start, start_with_listeners, Listeners, RunningServer};
