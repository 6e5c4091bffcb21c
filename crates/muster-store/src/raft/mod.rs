//! Everything that touches openraft's storage API: the type configuration, the segment-file log
//! store (with group commit) and the state machine that wraps the MVCC keyspace.
//!
//! openraft 0.10 is an alpha whose API moves between releases; keeping every openraft-facing
//! storage type here means an upgrade touches this module and the server's network/node glue
//! only.
//!
//! Layout:
//! - [`file_log`]: [`file_log::FileLogStore`], the Raft log and vote in append-only segment files
//!   under `<data_dir>/raft-log`; group commit (one write + one fdatasync per group of appends).
//! - [`state_machine`]: [`state_machine::StateMachineStore`], applies committed entries to
//!   [`crate::mvcc::Mvcc`] (fail-stop on storage errors); its `snapshot` submodule builds and
//!   installs snapshots off the async runtime, its `cleanup` submodule removes compacted
//!   history in the background.
//! - `test_util`, `tests_backup`, `tests_compaction`, `tests_failstop`, `tests_snapshot`, `suite_tests`:
//!   state-machine tests and openraft's storage suite.

pub mod file_log;
pub mod state_machine;
#[cfg(test)]
mod suite_tests;
#[cfg(test)]
mod test_util;
#[cfg(test)]
mod tests_backup;
#[cfg(test)]
mod tests_compaction;
#[cfg(test)]
mod tests_failstop;
#[cfg(test)]
mod tests_snapshot;

use muster_types::{CommandResponse, LogEntry};

openraft::declare_raft_types!(
    /// Muster's Raft type configuration: the log carries [`LogEntry`], apply returns
    /// [`CommandResponse`], nodes are `u64` ids with their peer and client addresses.
    pub TypeConfig:
        D = LogEntry,
        R = CommandResponse,
        NodeId = u64,
        Node = Member,
);

/// Where in a node's data dir the sled database (the state machine) lives.
pub const DB_DIR: &str = "db";
/// Where in a node's data dir the Raft log lives.
pub const LOG_DIR: &str = "raft-log";

pub type NodeId = u64;
pub type Node = Member;

/// A member as the Raft membership records it: where peers reach it (the peer port, Raft
/// traffic only) and where clients reach it (the client port, reported by MemberList and in
/// leader hints). The client address is published by the member itself once it runs (etcd's
/// model: MemberAdd knows only the peer URL), so it is empty until then.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// The peer address, `host:port`.
    pub addr: String,
    /// The client address, `host:port`; empty until the member has published it.
    pub client_addr: String,
}

impl Member {
    /// A member known so far by its peer address only.
    pub fn new(addr: impl Into<String>) -> Member {
        Member {
            addr: addr.into(),
            client_addr: String::new(),
        }
    }
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (clients: {})", self.addr, self.client_addr)
    }
}
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// A snapshot's bytes: the bincode of [`state_machine::SnapshotPayload`].
pub type SnapshotData = Vec<u8>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
pub type Raft = openraft::Raft<TypeConfig, state_machine::StateMachineStore>;

/// Runs blocking storage work (fsyncs, renames, scans of the whole state, snapshot encoding) on
/// tokio's blocking pool, so it never stalls a runtime worker and the heartbeats on it. A panic
/// in `f` comes back as an error (openraft treats it as fatal).
pub(crate) async fn blocking<T, F>(f: F) -> std::io::Result<T>
where
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// Maps a storage-layer failure into the `io::Error` openraft's storage traits speak.
pub(crate) fn io_err(e: impl std::error::Error + Send + Sync + 'static) -> std::io::Error {
    std::io::Error::other(e)
}
