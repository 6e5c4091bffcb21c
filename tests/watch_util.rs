//! Helpers for the watch tests: read a watch stream with deadlines, flatten its responses, and
//! check ordering, uniqueness and atomicity. Included by `t40_watch.rs` with `#[path]`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{bail, Context};
use etcd_client::{EventType, WatchOptions, WatchResponse, WatchStream};
use muster_tests::{etcd, Cluster};

pub const T: Duration = Duration::from_secs(15);

/// One event as the tests compare them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ev {
    pub rev: i64,
    pub key: String,
    pub put: bool,
    pub value: String,
    /// The previous value, when asked for and there was one.
    pub prev: Option<String>,
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn events_of(r: &WatchResponse) -> Vec<Ev> {
    r.events()
        .iter()
        .filter_map(|e| {
            let kv = e.kv()?;
            Some(Ev {
                rev: kv.mod_revision(),
                key: text(kv.key()),
                put: e.event_type() == EventType::Put,
                value: text(kv.value()),
                prev: e.prev_kv().map(|p| text(p.value())),
            })
        })
        .collect()
}

pub fn revision_of(r: &WatchResponse) -> i64 {
    r.header().map(|h| h.revision()).unwrap_or_default()
}

pub fn is_progress(r: &WatchResponse) -> bool {
    r.events().is_empty() && !r.created() && !r.canceled() && r.compact_revision() == 0
}

/// The next response, or an error after `t`.
pub async fn next(stream: &mut WatchStream, t: Duration) -> anyhow::Result<WatchResponse> {
    match tokio::time::timeout(t, stream.message()).await {
        Ok(Ok(Some(r))) => Ok(r),
        Ok(Ok(None)) => bail!("watch stream ended"),
        Ok(Err(e)) => Err(e).context("watch stream failed"),
        Err(_) => bail!("no watch response within {t:?}"),
    }
}

/// Opens a watch on `key` at node `id` and checks the `created` reply.
pub async fn watch(
    cluster: &Cluster,
    id: u64,
    key: &str,
    opts: WatchOptions,
) -> anyhow::Result<(WatchStream, i64)> {
    let mut c = etcd(cluster, id).await?;
    let mut stream = c.watch(key, Some(opts)).await?;
    let created = next(&mut stream, T).await?;
    anyhow::ensure!(created.created() && !created.canceled(), "{created:?}");
    Ok((stream, revision_of(&created)))
}

/// Reads responses until an event at revision ≥ `until` has arrived; returns each response's
/// events (progress replies are skipped).
pub async fn read_until(stream: &mut WatchStream, until: i64) -> anyhow::Result<Vec<Vec<Ev>>> {
    let mut out: Vec<Vec<Ev>> = Vec::new();
    while out
        .last()
        .and_then(|r| r.last())
        .is_none_or(|e| e.rev < until)
    {
        let r = next(stream, T).await?;
        anyhow::ensure!(!r.canceled(), "watch cancelled: {r:?}");
        let evs = events_of(&r);
        if !evs.is_empty() {
            out.push(evs);
        }
    }
    Ok(out)
}

/// Checks ordered + unique + atomic on a stream's responses; returns the flat events.
pub fn check_stream(responses: &[Vec<Ev>]) -> Vec<Ev> {
    let flat: Vec<Ev> = responses.iter().flatten().cloned().collect();
    assert!(
        flat.windows(2).all(|w| w[0].rev <= w[1].rev),
        "ordered by revision"
    );
    let unique: BTreeSet<(i64, &str)> = flat.iter().map(|e| (e.rev, e.key.as_str())).collect();
    assert_eq!(unique.len(), flat.len(), "no event twice");
    let mut response_of: BTreeMap<i64, usize> = BTreeMap::new();
    for (i, r) in responses.iter().enumerate() {
        for e in r {
            let first = *response_of.entry(e.rev).or_insert(i);
            assert_eq!(first, i, "revision {} split across responses", e.rev);
        }
    }
    flat
}
