//! Helpers shared by the API benchmarks: endpoint parsing, raw gRPC channels, progress output.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tonic::transport::Channel;

pub fn parse_endpoints(s: &str) -> Vec<String> {
    s.split(',')
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect()
}

/// One HTTP/2 channel per endpoint (each is multiplexed by the workers that share it).
pub async fn channels(endpoints: &[String]) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(endpoints.len());
    for ep in endpoints {
        let uri = if ep.starts_with("http://") || ep.starts_with("https://") {
            ep.clone()
        } else {
            format!("http://{ep}")
        };
        let ch = Channel::from_shared(uri.clone())
            .with_context(|| format!("bad endpoint {ep}"))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("connecting to {uri}"))?;
        out.push(ch);
    }
    anyhow::ensure!(!out.is_empty(), "no endpoints");
    Ok(out)
}

/// Prints `  … {done} / {total} {what}` to stderr once a second until aborted.
pub fn progress(
    what: &'static str,
    done: Arc<AtomicUsize>,
    total: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            eprintln!("  … {} / {total} {what}", done.load(Ordering::Relaxed));
        }
    })
}

/// Splits `count` items over `workers` as evenly as possible; the share of worker `w`.
pub fn share(count: usize, workers: usize, w: usize) -> usize {
    count / workers + usize::from(w < count % workers)
}

/// Resident set size of a process in KiB (from /proc/<pid>/status, VmRSS).
pub fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    let kib = line
        .split_whitespace()
        .nth(1)
        .context("malformed VmRSS")?
        .parse()?;
    Ok(kib)
}
