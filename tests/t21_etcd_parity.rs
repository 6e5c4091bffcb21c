//! etcd parity (issue 14): requests etcd 3.4 accepts are accepted, and refusals carry etcd's
//! exact gRPC code and text (clientv3 maps errors by text) — nested Txn writes, key and
//! request sizes, a negative Range limit, member errors; HashKV equal on every member (also
//! through `etcdctl endpoint hashkv --cluster`); MoveLeader (also `etcdctl move-leader`).

use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use muster_tests::{etcd, etcdctl, etcdctl_ok, status, wait_until, Cluster};
use serde_json::Value;
use tonic::Code;
use tracing::info;

const T: Duration = Duration::from_secs(15);

fn put(k: &str, v: &str) -> TxnOp {
    TxnOp::put(k, v, None)
}

/// `t` is refused with etcd's duplicate-key error.
async fn dup(c: &mut etcd_client::Client, t: Txn) -> anyhow::Result<()> {
    let s = status(c.txn(t).await.expect_err("duplicate"))?;
    assert_eq!(
        (s.code(), s.message()),
        (
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request"
        )
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nested_txns_sizes_and_limits_match_etcd() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let mut c = etcd(&cluster, leader).await?;
    c.put("n/k", "1", None).await?;

    info!("--- step: an inner txn's Then and Else may write the same key (etcd's rule)");
    let inner = Txn::new()
        .when([Compare::version("n/k", CompareOp::Equal, 1)])
        .and_then([put("n/x", "then")])
        .or_else([put("n/x", "else")]);
    let r = c.txn(Txn::new().and_then([TxnOp::txn(inner)])).await?;
    assert!(r.succeeded());
    let got = c.get("n/x", None).await?;
    assert_eq!(got.kvs()[0].value(), b"then", "the inner Then ran");

    let inner = Txn::new()
        .when([Compare::version("n/k", CompareOp::Equal, 2)])
        .and_then([put("n/x", "then2"), TxnOp::get("n/y", None)])
        .or_else([put("n/x", "else2")]);
    c.txn(Txn::new().and_then([TxnOp::txn(inner), put("n/y", "y")]))
        .await?;
    let got = c.get("n/x", None).await?;
    assert_eq!(got.kvs()[0].value(), b"else2", "the inner Else ran");
    assert_eq!(c.get("n/y", None).await?.kvs()[0].value(), b"y");

    let inner = Txn::new()
        .when([Compare::version("n/k", CompareOp::Equal, 1)])
        .and_then([put("n/z", "z")])
        .or_else([TxnOp::delete("n/z", None)]);
    c.txn(Txn::new().and_then([TxnOp::txn(inner)])).await?;
    assert_eq!(c.get("n/z", None).await?.kvs()[0].value(), b"z");

    info!("--- step: still refused: one branch writing a key twice, across nesting levels");
    dup(
        &mut c,
        Txn::new().and_then([
            TxnOp::txn(Txn::new().and_then([put("n/x", "a")])),
            put("n/x", "b"),
        ]),
    )
    .await?;
    dup(
        &mut c,
        Txn::new().and_then([
            TxnOp::txn(Txn::new().or_else([TxnOp::delete("n/", None)])),
            put("n/", "b"),
        ]),
    )
    .await?;
    dup(
        &mut c,
        Txn::new().and_then([
            TxnOp::txn(Txn::new().and_then([put("n/q", "a")])),
            TxnOp::txn(Txn::new().or_else([put("n/q", "b")])),
        ]),
    )
    .await?;

    info!("--- step: keys are bounded by the request size only; a negative limit is no limit");
    let big_key = format!("n/{}", "k".repeat(40 * 1024));
    c.put(big_key.as_str(), "v", None).await?;
    assert_eq!(c.get(big_key.as_str(), None).await?.kvs().len(), 1);
    let all = c
        .get("n/", Some(GetOptions::new().with_prefix().with_limit(-1)))
        .await?;
    assert!(
        all.kvs().len() >= 5 && !all.more(),
        "negative limit = no limit"
    );

    info!("--- step: request too large: etcd's exact text under the gRPC bound, gRPC's above");
    let s = status(
        c.put("n/big", vec![0u8; 1600 * 1024], None)
            .await
            .expect_err("1.6 MiB value"),
    )?;
    assert_eq!(
        (s.code(), s.message()),
        (Code::InvalidArgument, "etcdserver: request is too large")
    );
    let s = status(
        c.put("n/huge", vec![0u8; 2 << 20], None)
            .await
            .expect_err("2 MiB value"),
    )?;
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(
        s.message()
            .starts_with("grpc: received message larger than max ("),
        "grpc-go's text, as etcd: {s:?}"
    );
    assert!(c.get("n/big", None).await?.kvs().is_empty());
    assert!(c.get("n/huge", None).await?.kvs().is_empty());
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn member_errors_are_etcds() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let follower = cluster.follower_of(leader);
    // Through a follower, so the leader's answer travels back over the forward.
    let mut c = etcd(&cluster, follower).await?;
    let expect = |r: Result<(), etcd_client::Error>, code: Code, text: &str| {
        let s = status(r.expect_err(text))?;
        assert_eq!((s.code(), s.message()), (code, text));
        anyhow::Ok(())
    };
    expect(
        c.member_remove(12345).await.map(|_| ()),
        Code::NotFound,
        "etcdserver: member not found",
    )?;
    expect(
        c.member_promote(12345).await.map(|_| ()),
        Code::NotFound,
        "etcdserver: member not found",
    )?;
    expect(
        c.member_promote(leader).await.map(|_| ()),
        Code::FailedPrecondition,
        "etcdserver: can only promote a learner member",
    )?;
    for bad in [
        "not a url",
        "http://127.0.0.1",
        "ftp://127.0.0.1:1",
        "http://h:1/path",
    ] {
        expect(
            c.member_add([bad], None).await.map(|_| ()),
            Code::InvalidArgument,
            "etcdserver: given member URLs are invalid",
        )?;
    }
    let taken = format!("http://{}", cluster.peer_addr(leader));
    expect(
        c.member_add([taken], None).await.map(|_| ()),
        Code::FailedPrecondition,
        "etcdserver: Peer URLs already exists",
    )?;
    assert_eq!(c.member_list().await?.members().len(), 3, "nothing changed");
    cluster.shutdown().await;
    Ok(())
}

fn json(s: &str) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(s)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hash_kv_agrees_on_every_member() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let mut c = etcd(&cluster, leader).await?;
    for i in 0..50 {
        c.put(format!("h/{i:02}"), format!("v{i}"), None).await?;
    }
    let at = c
        .delete("h/07", None)
        .await?
        .header()
        .map(|h| h.revision())
        .unwrap_or_default();
    cluster.wait_converged(T).await?;

    info!("--- step: every member hashes revision {at} the same");
    let mut hashes = Vec::new();
    for id in cluster.ids() {
        let r = etcd(&cluster, id).await?.hash_kv(at).await?;
        hashes.push(r.hash());
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");

    info!("--- step: a later write changes the current hash, not the hash at {at}");
    c.put("h/00", "changed", None).await?;
    cluster.wait_converged(T).await?;
    let mut again = etcd(&cluster, cluster.follower_of(leader)).await?;
    assert_eq!(again.hash_kv(at).await?.hash(), hashes[0]);
    let now = again.hash_kv(0).await?;
    assert_ne!(now.hash(), hashes[0], "the keyspace changed");
    assert_eq!(now.hash_revision(), at + 1);

    info!("--- step: etcdctl endpoint hashkv --cluster prints one hash for every member");
    let out = etcdctl_ok(
        &cluster.endpoints()[..1],
        &["endpoint", "hashkv", "--cluster", "-w", "json"],
        None,
    )?;
    let rows = json(&out)?;
    let rows = rows.as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 3, "{out}");
    let first = &rows[0]["HashKV"]["hash"];
    assert!(first.as_u64().is_some(), "{out}");
    assert!(rows.iter().all(|r| &r["HashKV"]["hash"] == first), "{out}");

    info!("--- step: below the compact revision HashKV fails as a Range would");
    c.compact(at, None).await?;
    let s = status(c.hash_kv(at - 1).await.expect_err("compacted"))?;
    assert_eq!(s.code(), Code::OutOfRange);
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn move_leader_moves_it() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let target = cluster.follower_of(leader);
    let mut c = etcd(&cluster, leader).await?;

    let s = status(c.move_leader(12345).await.expect_err("unknown target"))?;
    assert_eq!(
        (s.code(), s.message()),
        (
            Code::FailedPrecondition,
            "etcdserver: bad leader transferee"
        )
    );
    let mut f = etcd(&cluster, target).await?;
    let s = status(
        f.move_leader(leader)
            .await
            .expect_err("asked of a follower"),
    )?;
    assert_eq!(
        (s.code(), s.message()),
        (Code::FailedPrecondition, "etcdserver: not leader")
    );

    info!("--- step: MoveLeader {leader} → {target}");
    c.move_leader(target).await?;
    assert_eq!(cluster.node(leader)?.current_leader(), Some(target));
    wait_until(T, "every node to follow the new leader", || async {
        (cluster.agreed_leader() == Some(target)).then_some(())
    })
    .await?;
    f.put("m/after", "1", None).await?;

    info!("--- step: etcdctl move-leader back to {leader}");
    let out = etcdctl(
        &cluster.endpoints(),
        &["move-leader", &format!("{leader:x}")],
        None,
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(T, "every node to follow the old leader again", || async {
        (cluster.agreed_leader() == Some(leader)).then_some(())
    })
    .await?;

    info!("--- step: a graceful stop of the leader hands the leadership over before it ends");
    let mut cluster = cluster;
    cluster.stop_gracefully(leader).await?;
    // No waiting: the hand-off returned once a survivor led (a crash-stop would leave the
    // survivors leaderless until their election timeout).
    let leading: Vec<u64> = cluster
        .running()
        .into_iter()
        .filter(|id| {
            cluster
                .node(*id)
                .is_ok_and(|n| n.current_leader() == Some(*id))
        })
        .collect();
    assert_eq!(leading.len(), 1, "a survivor leads at once: {leading:?}");
    cluster.shutdown().await;
    Ok(())
}
