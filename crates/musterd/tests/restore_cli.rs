//! `musterd restore`, the binary: restores a node's backup into an empty data dir and says
//! what it restored; refuses a file that is not a backup and a data dir already in use, with
//! a message and a non-zero exit.

use std::process::Command;
use std::time::Duration;

use muster_testkit::TestCluster;
use muster_types::{Command as Cmd, PutRequest};

fn restore(snapshot: &std::path::Path, data_dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_musterd"))
        .args(["restore", "--snapshot"])
        .arg(snapshot)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("running musterd")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_writes_the_backup_and_refuses_bad_input() -> anyhow::Result<()> {
    let cluster = TestCluster::start(1).await?;
    let node = cluster.node(cluster.wait_for_leader(Duration::from_secs(10)).await?)?;
    for i in 0..20 {
        node.write(Cmd::Put(PutRequest {
            key: format!("k{i}").into_bytes(),
            value: b"v".to_vec(),
            ..Default::default()
        }))
        .await?;
    }
    let (bytes, summary) = node.sm().backup().await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("backup.db");
    std::fs::write(&file, &bytes)?;

    let target = dir.path().join("restored");
    let out = restore(&file, &target);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains(&format!("restored revision {}", summary.revision)),
        "{stdout}"
    );

    let again = restore(&file, &target);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds a node's data"),
        "{again:?}"
    );

    let not_a_backup = dir.path().join("etcd.db");
    std::fs::write(&not_a_backup, vec![0u8; 8192])?;
    let foreign = restore(&not_a_backup, &dir.path().join("other"));
    assert!(!foreign.status.success());
    assert!(
        String::from_utf8_lossy(&foreign.stderr).contains("not a Muster backup"),
        "{foreign:?}"
    );
    cluster.shutdown().await;
    Ok(())
}
