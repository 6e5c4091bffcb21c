//! Shared helpers for Muster's end-to-end tests: etcd clients bound to one node, gRPC status
//! extraction, and running the real `etcdctl`.
//!
//! Test files are named by category: `t10_*` KV, `t11_*` failover, `t12_*` bad input,
//! `t20_*` etcdctl compatibility.

use std::process::Output;

use anyhow::{bail, Context};
use muster_testkit::TestCluster;

pub use muster_testkit::{wait_until, TestCluster as Cluster};

/// An etcd v3 client that talks to node `id` only (no balancing), so a test controls which
/// node serves each request.
pub async fn etcd(cluster: &TestCluster, id: u64) -> anyhow::Result<etcd_client::Client> {
    let ep = format!("http://{}", cluster.addr(id));
    Ok(etcd_client::Client::connect([ep], None).await?)
}

/// The gRPC status inside an etcd-client error.
pub fn status(err: etcd_client::Error) -> anyhow::Result<tonic::Status> {
    match err {
        etcd_client::Error::GRpcStatus(s) => Ok(s),
        other => bail!("expected a gRPC status, got {other:?}"),
    }
}

/// Runs the real `etcdctl` (API v3) against `endpoints`, optionally feeding `stdin`.
pub fn etcdctl(endpoints: &[String], args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let eps: Vec<String> = endpoints
        .iter()
        .map(|e| e.trim_start_matches("http://").to_string())
        .collect();
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", eps.join(",")))
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .context("running etcdctl (install Debian's etcd-client package)")?;
    if let Some(input) = stdin {
        if let Some(mut s) = child.stdin.take() {
            s.write_all(input.as_bytes())?;
        }
    }
    Ok(child.wait_with_output()?)
}

/// Runs `etcdctl` and returns stdout, failing with stderr when it exits non-zero.
pub fn etcdctl_ok(
    endpoints: &[String],
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<String> {
    let out = etcdctl(endpoints, args, stdin)?;
    if !out.status.success() {
        bail!(
            "etcdctl {:?} failed: {}",
            args,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}
