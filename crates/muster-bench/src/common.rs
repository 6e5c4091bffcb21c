//! Helpers shared by the API benchmarks: endpoints and connections, the leader lookup, key
//! naming, progress output and process memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use muster_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use muster_proto::etcdserverpb::StatusRequest;
use tonic::transport::Channel;

/// How long one Status call may take before the endpoint counts as not answering.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

pub fn parse_endpoints(s: &str) -> Vec<String> {
    s.split(',')
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect()
}

/// A new HTTP/2 connection to one endpoint (`host:port` or a URL).
pub async fn connect(endpoint: &str) -> anyhow::Result<Channel> {
    let uri = if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    Channel::from_shared(uri.clone())
        .with_context(|| format!("bad endpoint {endpoint}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to {uri}"))
}

/// One connection per endpoint.
pub async fn channels(endpoints: &[String]) -> anyhow::Result<Vec<Channel>> {
    worker_channels(endpoints, endpoints.len()).await
}

/// `n` separate connections, the `w`-th to `endpoints[w % len]`: every simulated client has
/// its own HTTP/2 connection, and the clients are spread evenly over the nodes.
pub async fn worker_channels(endpoints: &[String], n: usize) -> anyhow::Result<Vec<Channel>> {
    anyhow::ensure!(!endpoints.is_empty(), "no endpoints");
    let mut out = Vec::with_capacity(n);
    for w in 0..n {
        out.push(connect(&endpoints[w % endpoints.len()]).await?);
    }
    Ok(out)
}

/// What one endpoint's Maintenance.Status says about itself and the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeStatus {
    pub member_id: u64,
    /// 0 while the node knows no leader.
    pub leader: u64,
    pub raft_term: u64,
}

/// Maintenance.Status of one endpoint, over `ch`.
pub async fn status(ch: Channel) -> anyhow::Result<NodeStatus> {
    let mut client = MaintenanceClient::new(ch);
    let r = tokio::time::timeout(STATUS_TIMEOUT, client.status(StatusRequest {}))
        .await
        .context("Status timed out")?
        .context("Status")?
        .into_inner();
    let member_id = r
        .header
        .map(|h| h.member_id)
        .context("Status without header")?;
    Ok(NodeStatus {
        member_id,
        leader: r.leader,
        raft_term: r.raft_term,
    })
}

/// The index in `endpoints` of the leader, and its Status: the endpoint whose own member id is
/// the leader its Status reports (works for etcd and Muster alike). Retries for `within`.
pub async fn find_leader(
    endpoints: &[String],
    within: Duration,
) -> anyhow::Result<(usize, NodeStatus)> {
    let chans = channels(endpoints).await?;
    let deadline = Instant::now() + within;
    loop {
        for (i, ch) in chans.iter().enumerate() {
            if let Ok(s) = status(ch.clone()).await {
                if s.leader != 0 && s.leader == s.member_id {
                    return Ok((i, s));
                }
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no endpoint of {endpoints:?} reports itself as the leader after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Milliseconds since the epoch: makes key prefixes distinct across runs.
pub fn run_id() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// `prefix` + the zero-padded index, padded with `k` to at least `min_len` bytes.
pub fn numbered_key(prefix: &str, i: usize, min_len: usize) -> Vec<u8> {
    let mut k = format!("{prefix}{i:010}").into_bytes();
    if k.len() < min_len {
        k.resize(min_len, b'k');
    }
    k
}

/// Prints a progress line to stderr once a second until dropped.
pub struct Progress(tokio::task::JoinHandle<()>);

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Prints `  … {done} / {total} {what}` to stderr once a second until the guard is dropped.
pub fn progress(what: &'static str, done: Arc<AtomicUsize>, total: usize) -> Progress {
    progress_with(move || format!("{} / {total} {what}", done.load(Ordering::Relaxed)))
}

/// Prints `  … {line()}` to stderr once a second until the guard is dropped.
pub fn progress_with(line: impl Fn() -> String + Send + 'static) -> Progress {
    Progress(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            eprintln!("  … {}", line());
        }
    }))
}

/// Splits `count` items over `workers` as evenly as possible; the share of worker `w`.
pub fn share(count: usize, workers: usize, w: usize) -> usize {
    count / workers + usize::from(w < count % workers)
}

/// Resident set size of a process in KiB (from /proc/<pid>/status, VmRSS).
pub fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    proc_status_kib(pid, "VmRSS")
}

/// A KiB field of /proc/<pid>/status (`VmRSS`, `VmHWM` — the peak RSS, …).
pub fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = s
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
        .with_context(|| format!("no {field} line"))?;
    let kib = line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("malformed {field}"))?
        .parse()?;
    Ok(kib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_endpoints() {
        assert_eq!(numbered_key("a/", 7, 0), b"a/0000000007".to_vec());
        assert_eq!(numbered_key("a/", 7, 14), b"a/0000000007kk".to_vec());
        assert_eq!(parse_endpoints(" a:1, ,b:2"), vec!["a:1", "b:2"]);
    }

    #[test]
    fn shares_add_up() {
        for (count, workers) in [(10, 3), (2, 5), (0, 1), (64, 64)] {
            let total: usize = (0..workers).map(|w| share(count, workers, w)).sum();
            assert_eq!(total, count);
        }
    }
}
