//! The resuming watcher: watches the whole `chaos/` prefix from revision 1. When its stream
//! breaks, is cancelled, or goes silent while it is known to be behind, it reconnects to the
//! *next* node and resumes from last seen revision + 1 — the etcd client contract. Every event
//! is recorded, so verification can look for gaps, duplicates and reordering.

use std::time::{Duration, Instant};

use etcd_client::{EventType, WatchOptions};
use tokio::sync::watch;

use super::{client, Settings, PREFIX};

/// One event as the watcher received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub revision: i64,
    pub key: String,
    pub value: String,
    pub delete: bool,
    /// When the watcher received it.
    pub at: Instant,
}

#[derive(Debug, Default)]
pub struct WatchResult {
    pub events: Vec<Seen>,
    /// Streams (re)opened, the first included.
    pub streams: u64,
    /// The server reported compacted history under the watcher (an anomaly here: nothing
    /// compacts during a run).
    pub compacted: bool,
    /// Reached the target revision before the deadline.
    pub caught_up: bool,
    /// Next revision it would ask for.
    pub next_revision: i64,
}

/// A stream idle this long while the watcher is behind the target is abandoned for another node.
const IDLE: Duration = Duration::from_secs(5);
/// Upper bound on events kept (a safety bound on memory; far above any run's write count).
const MAX_EVENTS: usize = 20_000_000;

/// Watches until the revision in `target` has been seen (it stays `None` while the workload
/// runs), or until `hard_deadline`.
///
/// # Errors
/// None in practice; connection failures are retried on the next node.
pub async fn run(
    settings: Settings,
    target: watch::Receiver<Option<i64>>,
    hard_deadline: Instant,
) -> anyhow::Result<WatchResult> {
    let eps = &settings.endpoints;
    let mut out = WatchResult {
        next_revision: 1,
        ..Default::default()
    };
    let mut ep = 0usize;
    let reached = |next: i64, t: Option<i64>| t.is_some_and(|t| next > t);
    'streams: while Instant::now() < hard_deadline {
        if reached(out.next_revision, *target.borrow()) {
            out.caught_up = true;
            break;
        }
        let one = [eps[ep % eps.len()].clone()];
        ep += 1;
        let Ok(mut c) = client(&one, settings.op_timeout).await else {
            continue;
        };
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(out.next_revision)
            .with_progress_notify();
        let mut stream =
            match tokio::time::timeout(settings.op_timeout, c.watch(PREFIX, Some(opts))).await {
                Ok(Ok(s)) => s,
                _ => {
                    super::backoff().await;
                    continue;
                }
            };
        out.streams += 1;
        let mut last_msg = Instant::now();
        loop {
            if reached(out.next_revision, *target.borrow()) {
                out.caught_up = true;
                break 'streams;
            }
            if Instant::now() > hard_deadline {
                break 'streams;
            }
            let msg = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
            let msg = match msg {
                Err(_) => {
                    // Silence. Idle streams are normal only when nothing is being written; a
                    // long silence means a frozen or cut-off node: resume elsewhere.
                    if last_msg.elapsed() > IDLE {
                        continue 'streams;
                    }
                    continue;
                }
                Ok(Ok(Some(m))) => m,
                Ok(_) => continue 'streams, // ended or failed: resume on the next node
            };
            last_msg = Instant::now();
            if msg.compact_revision() != 0 {
                out.compacted = true;
                break 'streams;
            }
            for e in msg.events() {
                let Some(kv) = e.kv() else { continue };
                if out.events.len() < MAX_EVENTS {
                    out.events.push(Seen {
                        revision: kv.mod_revision(),
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        value: String::from_utf8_lossy(kv.value()).into_owned(),
                        delete: e.event_type() == EventType::Delete,
                        at: last_msg,
                    });
                }
                out.next_revision = out.next_revision.max(kv.mod_revision() + 1);
            }
            if msg.canceled() {
                continue 'streams;
            }
        }
    }
    Ok(out)
}
