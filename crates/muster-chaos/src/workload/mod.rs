//! The client workload that runs while the nemesis injects faults. Every task talks to the
//! cluster only through the etcd v3 API (the `etcd-client` crate), over the host-published
//! client ports, with a per-request deadline: an error or a timeout is an *unknown* outcome,
//! never assumed to have failed.
//!
//! | file | task |
//! |---|---|
//! | `writer.rs` | puts of unique keys (`chaos/w/…`); acked keys with their revision |
//! | `counter.rs` | compare-and-swap increments of one counter (`chaos/counter`) |
//! | `watcher.rs` | a prefix watcher on `chaos/` that resumes from last revision + 1 on another node |
//! | `registrations.rs` | lease-backed registrations (`chaos/reg/…`) kept alive through faults |
//! | `registers.rs` | puts, gets and compare-and-swaps on a few keys (`chaos/lin/…`), every one recorded for the linearizability check |

pub mod counter;
pub mod registers;
pub mod registrations;
pub mod watcher;
pub mod writer;

use std::time::Duration;

/// Prefix of everything the workload writes.
pub const PREFIX: &str = "chaos/";
/// Prefix of the writers' unique keys.
pub const WRITER_PREFIX: &str = "chaos/w/";
/// The CAS counter.
pub const COUNTER: &str = "chaos/counter";
/// Prefix of the lease-backed registrations.
pub const REG_PREFIX: &str = "chaos/reg/";
/// Prefix of the registers checked for linearizability.
pub const LIN_PREFIX: &str = "chaos/lin/";

/// Knobs shared by the workload tasks.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Every client endpoint (each task balances over all of them).
    pub endpoints: Vec<String>,
    /// Deadline of one request.
    pub op_timeout: Duration,
    /// Upper bound on operations per task (the loops are also bounded by the stop signal).
    pub max_ops: u64,
}

/// A client over `endpoints` with the per-request deadline. Connecting is lazy: this fails
/// only on malformed endpoints.
///
/// # Errors
/// Malformed endpoints.
pub async fn client(
    endpoints: &[String],
    op_timeout: Duration,
) -> anyhow::Result<etcd_client::Client> {
    let opts = etcd_client::ConnectOptions::new()
        .with_timeout(op_timeout)
        .with_connect_timeout(Duration::from_millis(1000))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
    Ok(etcd_client::Client::connect(endpoints, Some(opts)).await?)
}

/// The range end that makes `[prefix, end)` cover every key starting with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A short pause after a failed request, so a down cluster is not hammered in a tight loop.
pub async fn backoff() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}
