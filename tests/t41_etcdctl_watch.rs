//! The real `etcdctl watch` (Debian's etcd-client, v3.4) against a 3-node Muster cluster:
//! `--prefix`, `--rev` (history from a past revision), `--prev-kv`, and a compacted `--rev`.
//! etcdctl runs as a child process; its stdout lines are read with deadlines and it is killed
//! at the end.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use etcd_client::DeleteOptions;
use muster_tests::{etcd, wait_until, Cluster};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const T: Duration = Duration::from_secs(15);

/// A running `etcdctl watch`.
struct Ctl {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Ctl {
    fn spawn(endpoint: &str, args: &[&str]) -> anyhow::Result<Ctl> {
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!(
                "--endpoints={}",
                endpoint.trim_start_matches("http://")
            ))
            .arg("watch")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("running etcdctl (install Debian's etcd-client package)")?;
        let stdout = child.stdout.take().context("etcdctl stdout")?;
        Ok(Ctl {
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// The next `n` stdout lines, each within the deadline.
    async fn lines(&mut self, n: usize) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        while out.len() < n {
            match tokio::time::timeout(T, self.lines.next_line()).await {
                Ok(Ok(Some(l))) => out.push(l),
                Ok(Ok(None)) => bail!("etcdctl exited after {out:?}"),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => bail!("etcdctl printed nothing more within {T:?} after {out:?}"),
            }
        }
        Ok(out)
    }

    /// Everything it printed to stderr, after it exits (within the deadline).
    async fn stderr_after_exit(mut self) -> anyhow::Result<String> {
        let status = tokio::time::timeout(T, self.child.wait()).await??;
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use tokio::io::AsyncReadExt;
            e.read_to_string(&mut err).await?;
        }
        Ok(format!("{status}: {err}"))
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Waits until node `id` has `n` watchers, so writes made next are seen by a fresh etcdctl.
async fn wait_watchers(cluster: &Cluster, id: u64, n: usize) -> anyhow::Result<()> {
    let hub = cluster.node(id)?.sm().hub().clone();
    wait_until(T, "etcdctl's watcher to register", || {
        let hub = hub.clone();
        async move { (hub.stats().watchers >= n).then_some(()) }
    })
    .await
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcdctl_watch_prefix_rev_and_prev_kv() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let node = 2;
    let ep = cluster.endpoints()[1].clone();
    let mut kv = etcd(&cluster, 1).await?;
    let r0 = kv
        .put("w/a", "0", None)
        .await?
        .header()
        .map(|h| h.revision())
        .unwrap_or_default();
    // Watches are served from node 2's applied state; "from now" must be after r0 there.
    cluster.wait_converged(T).await?;

    let mut prefix = Ctl::spawn(&ep, &["--prefix", "w/"])?;
    wait_watchers(&cluster, node, 1).await?;
    kv.put("w/a", "1", None).await?;
    kv.put("w/b", "2", None).await?;
    kv.delete("w/a", None).await?;
    kv.put("x", "not watched", None).await?;
    kv.put("w/c", "3", None).await?;
    assert_eq!(
        prefix.lines(12).await?,
        strs(&["PUT", "w/a", "1", "PUT", "w/b", "2", "DELETE", "w/a", "", "PUT", "w/c", "3"])
    );

    let mut history = Ctl::spawn(&ep, &[&format!("--rev={r0}"), "w/a"])?;
    assert_eq!(
        history.lines(9).await?,
        strs(&["PUT", "w/a", "0", "PUT", "w/a", "1", "DELETE", "w/a", ""])
    );

    let mut prev = Ctl::spawn(&ep, &["--prev-kv", "w/b"])?;
    wait_watchers(&cluster, node, 3).await?;
    kv.put("w/b", "2b", None).await?;
    assert_eq!(
        prev.lines(5).await?,
        strs(&["PUT", "w/b", "2", "w/b", "2b"]),
        "the previous key-value, then the new one"
    );
    // The prefix watcher saw that too, and a range delete as one revision.
    kv.delete("w/", Some(DeleteOptions::new().with_prefix()))
        .await?;
    assert_eq!(
        prefix.lines(9).await?,
        strs(&["PUT", "w/b", "2b", "DELETE", "w/b", "", "DELETE", "w/c", ""])
    );

    let compact_at = kv
        .put("w/z", "z", None)
        .await?
        .header()
        .map(|h| h.revision())
        .unwrap_or_default();
    kv.compact(compact_at, None).await?;
    cluster.wait_converged(T).await?;
    let compacted = Ctl::spawn(&ep, &[&format!("--rev={r0}"), "w/a"])?;
    let out = compacted.stderr_after_exit().await?;
    assert!(
        out.contains("compacted"),
        "etcdctl reports the compaction: {out}"
    );

    for c in [prefix, history, prev] {
        c.stop().await;
    }
    cluster.shutdown().await;
    Ok(())
}
