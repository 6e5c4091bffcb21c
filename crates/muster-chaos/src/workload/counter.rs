//! The CAS incrementer: read the counter (linearizable), then `txn(value == cur) put cur+1`.
//! One incrementer, so every value 1..=final must have been written exactly once, and
//! acked ≤ final ≤ acked + unknown.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use tokio_util::sync::CancellationToken;

use super::{backoff, client, Settings, COUNTER};

#[derive(Debug, Default, Clone)]
pub struct CounterResult {
    /// Increments the cluster acknowledged as applied.
    pub acked: u64,
    /// Increments whose txn failed or timed out (may or may not have applied).
    pub unknown: u64,
    /// Txns that answered "compare failed" (only after an unknown one applied late).
    pub conflicts: u64,
    /// Reads of the counter that failed (no increment attempted).
    pub read_failures: u64,
}

/// Parses the counter's value (absent = 0).
pub fn value_of(kv: Option<&etcd_client::KeyValue>) -> u64 {
    kv.and_then(|kv| kv.value_str().ok()?.parse().ok())
        .unwrap_or(0)
}

/// Increments until `stop` or `settings.max_ops` attempts.
///
/// # Errors
/// Only if the client cannot be built.
pub async fn run(settings: Settings, stop: CancellationToken) -> anyhow::Result<CounterResult> {
    let mut c = client(&settings.endpoints, settings.op_timeout).await?;
    let mut out = CounterResult::default();
    for _ in 0..settings.max_ops {
        if stop.is_cancelled() {
            break;
        }
        let cur = match c.get(COUNTER, None).await {
            Ok(r) => value_of(r.kvs().first()),
            Err(_) => {
                out.read_failures += 1;
                backoff().await;
                continue;
            }
        };
        let cmp = if cur == 0 {
            Compare::create_revision(COUNTER, CompareOp::Equal, 0)
        } else {
            Compare::value(COUNTER, CompareOp::Equal, cur.to_string())
        };
        let txn =
            Txn::new()
                .when([cmp])
                .and_then([TxnOp::put(COUNTER, (cur + 1).to_string(), None)]);
        match c.txn(txn).await {
            Ok(t) if t.succeeded() => out.acked += 1,
            Ok(_) => out.conflicts += 1,
            Err(_) => {
                out.unknown += 1;
                backoff().await;
            }
        }
    }
    Ok(out)
}
