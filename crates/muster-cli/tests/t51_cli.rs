//! The built `muster` binary against a real 3-node cluster: output in both formats and the
//! documented exit codes (0 ok, 1 error, 2 usage, 3 not found / compare failed).

use std::process::Output;
use std::time::Duration;

use anyhow::{ensure, Context};
use muster_testkit::TestCluster;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_muster");

/// Runs `muster` with `MUSTER_ENDPOINTS` set to `endpoints`.
async fn muster(endpoints: &[String], args: &[&str]) -> anyhow::Result<Output> {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(BIN)
            .env("MUSTER_ENDPOINTS", endpoints.join(","))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("muster did not finish")??;
    Ok(out)
}

/// The next line of a child's stdout, parsed as JSON.
async fn next_json(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) -> anyhow::Result<Value> {
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("the command printed nothing")??
        .context("the command ended early")?;
    Ok(serde_json::from_str(&line)?)
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs and expects exit code `want`; returns stdout.
async fn expect(eps: &[String], args: &[&str], want: i32) -> anyhow::Result<String> {
    let o = muster(eps, args).await?;
    ensure!(
        code(&o) == want,
        "muster {args:?}: exit {} (want {want})\nstdout: {}\nstderr: {}",
        code(&o),
        stdout(&o),
        stderr(&o)
    );
    Ok(stdout(&o))
}

/// Runs with `-o json`, expects success, parses stdout.
async fn json(eps: &[String], args: &[&str]) -> anyhow::Result<Value> {
    let mut a = vec!["-o", "json"];
    a.extend_from_slice(args);
    let out = expect(eps, &a, 0).await?;
    Ok(serde_json::from_str(&out)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kv_commands_in_both_formats_with_exit_codes() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3).await?;
    let eps = cluster.endpoints();

    let put = json(&eps, &["kv", "put", "app/a", "one"]).await?;
    let rev_a = put["revision"].as_i64().context("revision")?;
    expect(&eps, &["kv", "put", "app/b", "two words"], 0).await?;

    let table = expect(&eps, &["kv", "get", "app/", "--prefix"], 0).await?;
    let lines: Vec<&str> = table.lines().collect();
    ensure!(lines.len() == 3, "header + 2 rows: {table}");
    ensure!(
        lines[0].starts_with("KEY") && lines[0].contains("VALUE"),
        "{table}"
    );
    ensure!(
        lines[1].starts_with("app/a") && lines[1].contains("one"),
        "{table}"
    );
    ensure!(lines[2].contains("two words"), "{table}");

    let got = json(&eps, &["kv", "get", "app/a"]).await?;
    ensure!(
        got["count"] == 1 && got["kvs"][0]["value"] == "one",
        "{got}"
    );
    ensure!(
        got["kvs"][0]["mod_revision"].as_i64() == Some(rev_a),
        "{got}"
    );

    let missing = muster(&eps, &["kv", "get", "app/none"]).await?;
    ensure!(code(&missing) == 3, "a missing key exits 3: {missing:?}");

    // A transaction: compare failed exits 3 and runs the else branch.
    let t = json(
        &eps,
        &[
            "kv",
            "txn",
            "--if",
            "value(app/a) = one",
            "--then",
            "put app/a uno",
            "--else",
            "get app/a",
        ],
    )
    .await?;
    ensure!(t["succeeded"] == true, "{t}");
    let failed = expect(
        &eps,
        &[
            "kv",
            "txn",
            "--if",
            "value(app/a) = one",
            "--then",
            "put app/a x",
            "--else",
            "get app/a",
        ],
        3,
    )
    .await?;
    ensure!(
        failed.contains("FAILED") && failed.contains("app/a=uno"),
        "{failed}"
    );

    let del = json(&eps, &["kv", "del", "app/", "--prefix"]).await?;
    ensure!(del["deleted"] == 2, "{del}");
    expect(&eps, &["kv", "del", "app/a"], 3).await?;

    // Watch from a known revision: deterministic, no race with the writes.
    let from = json(&eps, &["kv", "put", "w/0", "x"]).await?["revision"]
        .as_i64()
        .context("revision")?;
    for i in 1..=3 {
        expect(&eps, &["kv", "put", &format!("w/{i}"), &format!("v{i}")], 0).await?;
    }
    let rev = (from + 1).to_string();
    let lines = expect(
        &eps,
        &[
            "-o", "json", "kv", "watch", "w/", "--prefix", "--rev", &rev, "--count", "3",
        ],
        0,
    )
    .await?;
    let events: Vec<Value> = lines
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let keys: Vec<&str> = events
        .iter()
        .filter_map(|e| e["kv"]["key"].as_str())
        .collect();
    ensure!(keys == ["w/1", "w/2", "w/3"], "{lines}");
    ensure!(events.iter().all(|e| e["type"] == "PUT"), "{lines}");
    let text = expect(
        &eps,
        &["kv", "watch", "w/1", "--rev", &rev, "--count", "1"],
        0,
    )
    .await?;
    ensure!(text.starts_with("PUT w/1 v1 (revision"), "{text}");

    let c = json(&eps, &["kv", "compact", &rev]).await?;
    ensure!(c["compacted"].as_i64() == Some(from + 1), "{c}");
    let old = muster(&eps, &["kv", "get", "w/1", "--rev", "1"]).await?;
    ensure!(code(&old) == 1, "a compacted revision is an error: {old:?}");
    ensure!(stderr(&old).starts_with("error: ") && stderr(&old).lines().count() == 1);
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_commands() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3).await?;
    let eps = cluster.endpoints();
    let g = json(&eps, &["lease", "grant", "30"]).await?;
    let hex = g["id_hex"].as_str().context("id_hex")?.to_string();
    ensure!(g["ttl"] == 30, "{g}");
    let table = expect(&eps, &["lease", "grant", "40"], 0).await?;
    ensure!(
        table.starts_with("ID") && table.lines().count() == 2,
        "{table}"
    );

    expect(&eps, &["kv", "put", "leased", "v", "--lease", &hex], 0).await?;
    let ttl = json(&eps, &["lease", "ttl", &hex, "--keys"]).await?;
    ensure!(
        ttl["granted_ttl"] == 30 && ttl["keys"][0] == "leased",
        "{ttl}"
    );
    let ka = expect(&eps, &["lease", "keep-alive", &hex, "--count", "2"], 0).await?;
    ensure!(ka.lines().count() == 2 && ka.contains("kept alive"), "{ka}");
    let list = json(&eps, &["lease", "list"]).await?;
    ensure!(list["leases"].as_array().map(Vec::len) == Some(2), "{list}");

    expect(&eps, &["lease", "revoke", &hex], 0).await?;
    expect(&eps, &["kv", "get", "leased"], 3).await?;
    expect(&eps, &["lease", "revoke", &hex], 3).await?;
    expect(&eps, &["lease", "ttl", &hex], 3).await?;
    let lost = muster(&eps, &["lease", "keep-alive", &hex, "--once"]).await?;
    ensure!(
        code(&lost) == 3 && stderr(&lost).contains("not found"),
        "{lost:?}"
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registry_and_cluster_commands() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3).await?;
    let eps = cluster.endpoints();
    let reg = json(
        &eps,
        &[
            "registry",
            "register",
            "-s",
            "orders",
            "--address",
            "10.0.0.1",
            "--port",
            "80",
            "--weight",
            "5",
            "--meta",
            "zone=a",
        ],
    )
    .await?;
    ensure!(
        reg["instance_id"] == "10.0.0.1:80" && reg["lease_id"] == 0,
        "{reg}"
    );
    let eph = json(
        &eps,
        &[
            "registry",
            "register",
            "-s",
            "orders",
            "--address",
            "10.0.0.2",
            "--port",
            "80",
            "--ephemeral",
            "--ttl",
            "30s",
        ],
    )
    .await?;
    ensure!(eph["lease_id"].as_i64().unwrap_or(0) != 0, "{eph}");

    let d = json(&eps, &["registry", "discover", "-s", "orders"]).await?;
    let ids: Vec<&str> = d["instances"]
        .as_array()
        .context("instances")?
        .iter()
        .filter_map(|i| i["instance_id"].as_str())
        .collect();
    ensure!(ids == ["10.0.0.1:80", "10.0.0.2:80"], "{d}");
    ensure!(d["instances"][0]["metadata"]["zone"] == "a", "{d}");
    let table = expect(&eps, &["registry", "discover", "-s", "orders"], 0).await?;
    ensure!(
        table.starts_with("INSTANCE") && table.contains("zone=a"),
        "{table}"
    );

    let s = json(&eps, &["registry", "services"]).await?;
    ensure!(
        s["services"][0]["service"] == "orders" && s["services"][0]["instances"] == 2,
        "{s}"
    );

    // Watch the service: the snapshot (two instances), then one change.
    let mut child = tokio::process::Command::new(BIN)
        .env("MUSTER_ENDPOINTS", eps.join(","))
        .args([
            "-o", "json", "registry", "watch", "-s", "orders", "--count", "1",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    for _ in 0..2 {
        let l = next_json(&mut lines).await?;
        ensure!(l["type"] == "SNAPSHOT", "{l}");
    }
    expect(
        &eps,
        &[
            "registry",
            "deregister",
            "-s",
            "orders",
            "--id",
            "10.0.0.1:80",
        ],
        0,
    )
    .await?;
    let change = next_json(&mut lines).await?;
    ensure!(
        change["type"] == "DELETE" && change["instance_id"] == "10.0.0.1:80",
        "{change}"
    );
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    ensure!(status.success(), "the watch exits 0 after --count changes");

    expect(
        &eps,
        &[
            "registry",
            "deregister",
            "-s",
            "orders",
            "--id",
            "10.0.0.1:80",
        ],
        3,
    )
    .await?;
    expect(&eps, &["registry", "discover", "-s", "nothing"], 3).await?;

    let m = json(&eps, &["cluster", "members"]).await?;
    ensure!(m["members"].as_array().map(Vec::len) == Some(3), "{m}");
    let st = json(&eps, &["cluster", "status"]).await?;
    let endpoints = st["endpoints"].as_array().context("endpoints")?;
    ensure!(endpoints.len() == 3, "{st}");
    let leaders = endpoints.iter().filter(|e| e["is_leader"] == true).count();
    ensure!(leaders == 1, "exactly one leader: {st}");
    let table = expect(&eps, &["cluster", "status"], 0).await?;
    ensure!(
        table.lines().count() == 4 && table.starts_with("ENDPOINT"),
        "{table}"
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_connection_errors() -> anyhow::Result<()> {
    let eps = vec!["127.0.0.1:1".to_string()];
    let o = muster(&eps, &["kv", "frobnicate"]).await?;
    ensure!(code(&o) == 2, "unknown subcommand: {o:?}");
    let o = muster(&eps, &["lease", "revoke", "not-hex"]).await?;
    ensure!(code(&o) == 2, "bad lease id: {o:?}");
    let o = muster(&eps, &["kv", "txn", "--if", "size(k) = 1"]).await?;
    ensure!(
        code(&o) == 2 && stderr(&o).starts_with("error: bad compare"),
        "{o:?}"
    );
    let o = muster(&eps, &["--timeout", "300ms", "kv", "get", "k"]).await?;
    ensure!(code(&o) == 1, "unreachable: {o:?}");
    let err = stderr(&o);
    ensure!(
        err.starts_with("error: ") && err.lines().count() == 1,
        "one clear line: {err}"
    );
    let o = muster(&["https://h:1".to_string()], &["kv", "get", "k"]).await?;
    ensure!(code(&o) == 2 && stderr(&o).contains("TLS"), "{o:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_add_promote_remove() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3).await?;
    let eps: Vec<String> = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.addr(id).to_string())
        .collect();
    let (addr, listener) = cluster.bind_joiner().await?;
    let added = json(
        &eps,
        &[
            "cluster",
            "add",
            &addr.to_string(),
            "--learner",
            "-o",
            "json",
        ],
    )
    .await?;
    let id = added["members"][0]["id"]
        .as_u64()
        .context("new member id")?;
    ensure!(added["members"][0]["is_learner"] == true, "{added}");
    cluster.start_joiner(id, listener).await?;
    let promoted = json(&eps, &["cluster", "promote", &id.to_string(), "-o", "json"]).await?;
    let members = promoted["members"].as_array().cloned().unwrap_or_default();
    ensure!(members.len() == 4, "{promoted}");
    ensure!(
        members.iter().all(|m| m["is_learner"] == false),
        "{promoted}"
    );
    let table = expect(&eps, &["cluster", "remove", &id.to_string()], 0).await?;
    ensure!(
        !table.contains(&id.to_string()),
        "removed member still listed: {table}"
    );
    // Promoting a member that is not a learner is refused with a clear one-line error.
    let out = muster(&eps, &["cluster", "promote", "1"]).await?;
    ensure!(
        code(&out) != 0 && stderr(&out).lines().count() == 1,
        "{}",
        stderr(&out)
    );
    cluster.shutdown().await;
    Ok(())
}
