//! The real `etcdctl` (Debian's etcd-client, v3.4) against a 3-node Muster cluster: put, get
//! and its options, del, txn, compaction, endpoint status/health and member list.

use muster_tests::{etcdctl, etcdctl_ok, Cluster};
use serde_json::Value;

fn json(s: &str) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(s)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcdctl_kv_commands() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let eps = cluster.endpoints();
    let one = vec![eps[1].clone()];
    let eps = &eps;

    assert_eq!(etcdctl_ok(&one, &["put", "ctl/a", "1"], None)?.trim(), "OK");
    etcdctl_ok(eps, &["put", "ctl/b", "2"], None)?;
    etcdctl_ok(eps, &["put", "ctl/c", "3"], None)?;
    etcdctl_ok(eps, &["put", "zzz", "last"], None)?;

    assert_eq!(etcdctl_ok(eps, &["get", "ctl/a"], None)?, "ctl/a\n1\n");
    assert_eq!(
        etcdctl_ok(
            eps,
            &["get", "ctl/", "--prefix", "--print-value-only"],
            None
        )?,
        "1\n2\n3\n"
    );
    assert_eq!(
        etcdctl_ok(eps, &["get", "ctl/c", "--from-key", "--keys-only"], None)?,
        "ctl/c\n\nzzz\n\n"
    );
    assert_eq!(
        etcdctl_ok(
            eps,
            &["get", "ctl/", "--prefix", "--limit=1", "--keys-only"],
            None
        )?,
        "ctl/a\n\n"
    );

    let j = json(&etcdctl_ok(
        eps,
        &["get", "ctl/", "--prefix", "--limit=2", "-w", "json"],
        None,
    )?)?;
    assert_eq!(j["count"], 3, "count is filled even with a limit: {j}");
    assert_eq!(j["more"], true);
    assert_eq!(j["kvs"].as_array().map(Vec::len), Some(2));
    let rev_a = j["kvs"][0]["mod_revision"].as_i64().unwrap_or_default();

    let fields = etcdctl_ok(eps, &["get", "ctl/a", "-w", "fields"], None)?;
    assert!(fields.contains("\"Count\" : 1"), "{fields}");
    assert!(fields.contains("\"Value\" : \"1\""), "{fields}");

    etcdctl_ok(eps, &["put", "ctl/a", "1b"], None)?;
    assert_eq!(
        etcdctl_ok(
            eps,
            &[
                "get",
                "ctl/a",
                &format!("--rev={rev_a}"),
                "--print-value-only"
            ],
            None
        )?,
        "1\n"
    );

    assert_eq!(
        etcdctl_ok(eps, &["del", "ctl/b", "--prev-kv"], None)?,
        "1\nctl/b\n2\n"
    );
    assert_eq!(etcdctl_ok(eps, &["del", "ctl/nothing"], None)?, "0\n");

    // Interactive txn: compares, then success ops, then failure ops, blank-line separated.
    let input = "value(\"ctl/a\") = \"1b\"\n\nput ctl/a swapped\n\nput ctl/a failed\n\n";
    let out = etcdctl_ok(eps, &["txn", "-i"], Some(input))?;
    assert!(out.contains("SUCCESS"), "{out}");
    assert_eq!(
        etcdctl_ok(eps, &["get", "ctl/a", "--print-value-only"], None)?,
        "swapped\n"
    );
    let out = etcdctl_ok(eps, &["txn", "-i"], Some(input))?;
    assert!(out.contains("FAILURE"), "{out}");
    assert_eq!(
        etcdctl_ok(eps, &["get", "ctl/a", "--print-value-only"], None)?,
        "failed\n"
    );

    let j = json(&etcdctl_ok(eps, &["get", "ctl/a", "-w", "json"], None)?)?;
    let now = j["header"]["revision"].as_i64().unwrap_or_default();
    assert!(etcdctl_ok(eps, &["compaction", &now.to_string()], None)?
        .contains(&format!("compacted revision {now}")));
    let old = etcdctl(eps, &["get", "ctl/a", &format!("--rev={rev_a}")], None)?;
    assert!(!old.status.success());
    assert!(String::from_utf8_lossy(&old.stderr).contains("required revision has been compacted"));

    let bad = etcdctl(eps, &["put", "", "v"], None)?;
    assert!(!bad.status.success(), "an empty key is refused");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcdctl_cluster_commands() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster
        .wait_for_leader(std::time::Duration::from_secs(10))
        .await?;
    let eps = cluster.endpoints();
    let one = vec![eps[0].clone()];

    let j = json(&etcdctl_ok(
        &one,
        &["endpoint", "status", "--cluster", "-w", "json"],
        None,
    )?)?;
    let statuses = j.as_array().cloned().unwrap_or_default();
    assert_eq!(
        statuses.len(),
        3,
        "--cluster found every member through MemberList: {j}"
    );
    for s in &statuses {
        assert_eq!(s["Status"]["leader"].as_u64(), Some(leader), "{s}");
        assert_eq!(s["Status"]["version"], "3.5.0");
    }
    let table = etcdctl_ok(
        &one,
        &["endpoint", "status", "--cluster", "-w", "table"],
        None,
    )?;
    assert_eq!(
        table.matches("true").count(),
        1,
        "exactly one leader: {table}"
    );

    let health = json(&etcdctl_ok(
        &eps,
        &["endpoint", "health", "-w", "json"],
        None,
    )?)?;
    let healthy = health
        .as_array()
        .map(|a| a.iter().filter(|h| h["health"] == true).count());
    assert_eq!(healthy, Some(3), "{health}");

    let members = etcdctl_ok(&one, &["member", "list"], None)?;
    assert_eq!(members.lines().count(), 3, "{members}");
    for id in cluster.ids() {
        assert!(members.contains(&format!("muster-{id}")), "{members}");
        assert!(members.contains(&cluster.addr(id).to_string()), "{members}");
    }
    cluster.shutdown().await;
    Ok(())
}
