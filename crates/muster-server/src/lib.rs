//! `musterd`: one Muster node — Raft over sled, the etcd v3 API and Muster's own services on
//! one gRPC port, HTTP health and metrics on another.
//!
//! Layout (one step of the data path per file):
//! - [`config`]: [`config::NodeConfig`], defaults and validation.
//! - [`server`]: binds ports, starts the node, serves every service.
//! - [`node`]: opens storage and Raft, bootstraps the cluster; the handles services use.
//! - [`write`]: the write path (leader or one-hop forward) and the linearizable-read barrier.
//! - [`network`]: the Raft network, client side (peer channels, bincode payloads).
//! - [`grpc`]: one file per gRPC service; validation and conversion only.
//! - [`error`]: the server's errors and their single mapping to gRPC status.
//! - [`http`]: /health, /ready, /metrics.

pub mod config;
pub mod error;
pub mod grpc;
pub mod http;
pub mod network;
pub mod node;
pub mod server;
pub mod write;

pub use config::NodeConfig;
pub use server::{start, start_with_listener, RunningServer};
