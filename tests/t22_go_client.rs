//! The official Go etcd client against Muster (issue 14): `tests/go/` holds a Go program on
//! clientv3 3.4 (Debian's golang-etcd-server-dev, built offline in GOPATH mode;
//! `scripts/install-prereqs.sh` installs Go and the sources) that runs the patterns Go
//! services use — KV and Range options, nested Txn, STM, leases, watch, Mutex, Election,
//! leasing KV, mirror, the naming manager and gRPC resolver, cluster and maintenance calls —
//! and a client that must keep working when the node behind its first endpoint dies.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context};
use muster_tests::Cluster;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tracing::info;

/// Where Debian puts the Go sources of golang-*-dev packages.
const DEBIAN_GOPATH: &str = "/usr/share/gocode";
/// The scenarios `gosuite` runs by default (its `scenarios` list).
const SCENARIOS: usize = 12;
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// Builds `gosuite` once per test process (go's own cache makes later builds quick).
fn gosuite() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build() -> anyhow::Result<PathBuf> {
    let ours = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("go");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gosuite");
    let status = std::process::Command::new("go")
        .env("GO111MODULE", "off")
        .env("GOPATH", format!("{DEBIAN_GOPATH}:{}", ours.display()))
        .env("GOFLAGS", "")
        .args(["build", "-o"])
        .arg(&out)
        .arg("muster.test/gosuite")
        .status()
        .context(
            "running `go` (install golang-go and golang-etcd-server-dev: \
             scripts/install-prereqs.sh)",
        )?;
    if !status.success() {
        bail!("go build of tests/go failed ({status}); is golang-etcd-server-dev installed?");
    }
    Ok(out)
}

/// `host:port` of every running node, comma-separated.
fn endpoints(cluster: &Cluster) -> String {
    cluster
        .endpoints()
        .iter()
        .map(|e| e.trim_start_matches("http://").to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_go_client_patterns_work() -> anyhow::Result<()> {
    let bin = gosuite()?;
    let cluster = Cluster::start(3).await?;
    cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let out = tokio::time::timeout(
        RUN_LIMIT,
        Command::new(&bin)
            .arg(endpoints(&cluster))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("gosuite did not finish")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    info!("gosuite:\n{stdout}");
    let passed = stdout.lines().filter(|l| l.starts_with("PASS ")).count();
    assert!(
        out.status.success() && passed == SCENARIOS,
        "{passed} of {SCENARIOS} passed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_go_client_keeps_working_when_its_first_node_dies() -> anyhow::Result<()> {
    let bin = gosuite()?;
    let mut cluster = Cluster::start(3).await?;
    cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let first = cluster.ids()[0];
    let mut child = Command::new(&bin)
        .arg(endpoints(&cluster))
        .arg("failover_first_endpoint")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let ready = tokio::time::timeout(RUN_LIMIT, lines.next_line())
        .await
        .context("no READY from gosuite")??;
    assert_eq!(ready.as_deref(), Some("READY"));

    info!("--- step: kill node {first}, the client's first endpoint");
    cluster.kill(first).await?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(b"go\n").await?;
    drop(stdin);
    let mut rest = Vec::new();
    let status = tokio::time::timeout(RUN_LIMIT, async {
        while let Some(l) = lines.next_line().await? {
            rest.push(l);
        }
        child.wait().await
    })
    .await
    .context("gosuite did not finish")??;
    assert!(
        status.success()
            && rest
                .iter()
                .any(|l| l.starts_with("PASS failover_first_endpoint")),
        "{rest:?}"
    );
    cluster.shutdown().await;
    Ok(())
}
