//! The real `etcdctl` (Debian's etcd-client, v3.4) against a 3-node Muster cluster: lease
//! grant, put --lease, lease keep-alive (a child process: one line read, then killed), lease
//! timetolive --keys, lease list, lease revoke — output as etcd prints it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use muster_tests::{etcdctl_ok, Cluster};

const T: Duration = Duration::from_secs(15);

/// The hex lease id in "lease 694d77aa9e38260f granted with TTL(30s)".
fn lease_id(grant_output: &str) -> anyhow::Result<String> {
    let mut words = grant_output.split_whitespace();
    match (words.next(), words.next()) {
        (Some("lease"), Some(id)) if i64::from_str_radix(id, 16).is_ok() => Ok(id.to_string()),
        _ => bail!("unexpected `lease grant` output: {grant_output:?}"),
    }
}

/// Runs `etcdctl lease keep-alive <id>` against `endpoint` and returns its first line of
/// output; the child is killed whatever happens.
async fn first_keep_alive_line(endpoint: &str, id: &str) -> anyhow::Result<String> {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(["lease", "keep-alive", id])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("running etcdctl")?;
    let stdout = child.stdout.take().context("child stdout")?;
    let read = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(T, read).await;
    // Killing closes the pipe, which also ends a read still blocked.
    let _ = child.kill();
    let _ = child.wait();
    Ok(line.context("etcdctl lease keep-alive printed nothing in time")???)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcdctl_lease_commands() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let follower = cluster.follower_of(leader);
    let eps = cluster.endpoints();
    let via_follower = vec![format!("http://{}", cluster.addr(follower))];

    let out = etcdctl_ok(&eps, &["lease", "grant", "30"], None)?;
    assert!(out.trim_end().ends_with("granted with TTL(30s)"), "{out}");
    let id = lease_id(&out)?;
    // The minimum TTL (2 s with the tests' election timeout) applies, as in etcd.
    let out = etcdctl_ok(&eps, &["lease", "grant", "1"], None)?;
    assert!(out.trim_end().ends_with("granted with TTL(2s)"), "{out}");
    let short = lease_id(&out)?;

    assert_eq!(
        etcdctl_ok(
            &eps,
            &["put", &format!("--lease={id}"), "ctl/leased", "v"],
            None
        )?,
        "OK\n"
    );
    etcdctl_ok(
        &eps,
        &["put", &format!("--lease={id}"), "ctl/also", "w"],
        None,
    )?;

    let line = first_keep_alive_line(&via_follower[0], &id).await?;
    assert_eq!(
        line.trim_end(),
        format!("lease {id} keepalived with TTL(30)")
    );

    let out = etcdctl_ok(&via_follower, &["lease", "timetolive", "--keys", &id], None)?;
    let prefix = format!("lease {id} granted with TTL(30s), remaining(");
    assert!(out.starts_with(&prefix), "{out}");
    assert!(
        out.trim_end()
            .ends_with("s), attached keys([ctl/also ctl/leased])"),
        "{out}"
    );
    let remaining: i64 = out[prefix.len()..]
        .split('s')
        .next()
        .and_then(|s| s.parse().ok())
        .context("remaining seconds")?;
    assert!((28..=30).contains(&remaining), "{out}");

    let out = etcdctl_ok(&eps, &["lease", "list"], None)?;
    let mut lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first().copied(), Some("found 2 leases"), "{out}");
    lines.remove(0);
    lines.sort_unstable();
    let mut want = vec![id.as_str(), short.as_str()];
    want.sort_unstable();
    assert_eq!(lines, want);

    assert_eq!(
        etcdctl_ok(&eps, &["lease", "revoke", &id], None)?,
        format!("lease {id} revoked\n")
    );
    assert_eq!(etcdctl_ok(&eps, &["get", "ctl/", "--prefix"], None)?, "");
    assert_eq!(
        etcdctl_ok(&eps, &["lease", "timetolive", &id], None)?,
        format!("lease {id} already expired\n")
    );
    cluster.shutdown().await;
    Ok(())
}
