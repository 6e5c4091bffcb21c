//! Writers: each puts unique keys `chaos/w/{writer}/{seq}` one at a time. An acknowledged put
//! is recorded with the revision the cluster answered; a failed one is "unknown" (it may still
//! have committed). Verification later requires every acked key on every node at that revision.

use tokio_util::sync::CancellationToken;

use super::{backoff, client, Settings, WRITER_PREFIX};

#[derive(Debug, Default)]
pub struct WriterResult {
    /// (key, revision of the put) for every acknowledged put.
    pub acked: Vec<(String, i64)>,
    /// Keys whose put failed or timed out: commit status unknown.
    pub unknown: Vec<String>,
}

/// Puts until `stop` or `settings.max_ops`.
///
/// # Errors
/// Only if the client cannot be built.
pub async fn run(
    settings: Settings,
    writer: usize,
    stop: CancellationToken,
) -> anyhow::Result<WriterResult> {
    let mut c = client(&settings.endpoints, settings.op_timeout).await?;
    let mut out = WriterResult::default();
    for seq in 0..settings.max_ops {
        if stop.is_cancelled() {
            break;
        }
        let key = format!("{WRITER_PREFIX}{writer}/{seq:08}");
        match c.put(key.clone(), format!("w{writer}-{seq}"), None).await {
            Ok(r) => {
                let rev = r.header().map_or(0, |h| h.revision());
                out.acked.push((key, rev));
            }
            Err(_) => {
                out.unknown.push(key);
                backoff().await;
            }
        }
    }
    Ok(out)
}
