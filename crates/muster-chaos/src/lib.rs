//! Docker-level chaos for Muster: a checker that runs a client workload against a three-node
//! docker-compose cluster while a seeded nemesis kills, restarts, pauses and partitions the
//! containers and adds, removes and replaces members, then verifies that nothing acknowledged was lost and that watchers and leases
//! behaved, and that each register's history is linearizable. It is the second layer on top of the in-process chaos test (`tests/t70_chaos.rs`),
//! which does the same against the testkit's fault-injecting network.
//!
//! # Layout
//! - [`http`]: a minimal HTTP GET for `/health` (shared with the image's `muster-health` probe).
//! - [`docker`]: the `docker` CLI — find containers by compose labels; kill/start, pause,
//!   network disconnect/connect; heal.
//! - [`cluster`]: node id ↔ container ↔ published ports; leader and convergence from `/health`.
//! - [`workload`]: writers, CAS incrementer, resuming watcher, lease-backed registrations,
//!   recorded registers.
//! - [`nemesis`]: the seeded fault schedule.
//! - [`verify`]: final per-node reads and every check; [`report`]: the summary table.
//! - [`linearizability`]: the Wing–Gong checker of the registers' histories, per key.
//!
//! Binaries: `muster-chaos` (the checker, `src/main.rs`) and `muster-health` (the probe).

pub mod cluster;
pub mod docker;
pub mod http;
pub mod linearizability;
pub mod nemesis;
pub mod report;
pub mod verify;
pub mod workload;
