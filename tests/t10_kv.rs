//! KV on a real 3-node cluster through the `etcd-client` crate: writes on any node, reads on
//! every node agree; etcd revision and version rules; range options; txn; compaction.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp};
use muster_tests::{etcd, status, Cluster};

const T: Duration = Duration::from_secs(10);

/// key, value, create_revision, mod_revision, version
type KvView = (Vec<u8>, Vec<u8>, i64, i64, i64);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_on_any_node_reads_on_every_node_agree() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let mut last_rev = 0;
    for (i, id) in cluster.ids().into_iter().enumerate() {
        let mut c = etcd(&cluster, id).await?;
        let resp = c.put(format!("agree/k{i}"), format!("v{i}"), None).await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
        assert_eq!(
            rev,
            last_rev.max(1) + 1,
            "each put advances the revision by one"
        );
        last_rev = rev;
    }
    // Linearizable reads on every node see every acknowledged write at once.
    let mut views = Vec::new();
    for id in cluster.ids() {
        let mut c = etcd(&cluster, id).await?;
        let r = c
            .get("agree/", Some(GetOptions::new().with_prefix()))
            .await?;
        assert_eq!(r.count(), 3, "node {id} sees all three keys");
        let kvs: Vec<KvView> = r
            .kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key().to_vec(),
                    kv.value().to_vec(),
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                )
            })
            .collect();
        assert_eq!(r.header().map(|h| h.revision()), Some(last_rev));
        views.push(kvs);
    }
    assert!(
        views.windows(2).all(|w| w[0] == w[1]),
        "all nodes return identical key-values: {views:?}"
    );
    // Serializable reads converge too.
    cluster.wait_converged(T).await?;
    for id in cluster.ids() {
        let mut c = etcd(&cluster, id).await?;
        let r = c
            .get(
                "agree/",
                Some(GetOptions::new().with_prefix().with_serializable()),
            )
            .await?;
        assert_eq!(r.count(), 3);
    }
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revisions_versions_and_prev_kv_follow_etcd() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let mut c = etcd(&cluster, 2).await?;
    let r1 = c
        .put("rv/a", "1", None)
        .await?
        .header()
        .map(|h| h.revision())
        .unwrap_or_default();
    let put2 = c
        .put("rv/a", "2", Some(PutOptions::new().with_prev_key()))
        .await?;
    let prev = put2.prev_key().expect("prev_kv returned");
    assert_eq!(
        (prev.value(), prev.version(), prev.mod_revision()),
        (&b"1"[..], 1, r1)
    );
    let r2 = put2.header().map(|h| h.revision()).unwrap_or_default();
    assert_eq!(r2, r1 + 1);
    let kv = c.get("rv/a", None).await?.kvs()[0].clone();
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.version()),
        (r1, r2, 2)
    );

    // Delete resets the version; a re-put is a new creation.
    let del = c
        .delete(
            "rv/a",
            Some(etcd_client::DeleteOptions::new().with_prev_key()),
        )
        .await?;
    assert_eq!(del.deleted(), 1);
    assert_eq!(del.prev_kvs()[0].value(), b"2");
    let r4 = c
        .put("rv/a", "3", None)
        .await?
        .header()
        .map(|h| h.revision())
        .unwrap_or_default();
    let kv = c.get("rv/a", None).await?.kvs()[0].clone();
    assert_eq!((kv.create_revision(), kv.version()), (r4, 1));

    // Deleting nothing does not advance the revision.
    let before = c
        .get("rv/a", None)
        .await?
        .header()
        .map(|h| h.revision())
        .unwrap_or_default();
    let del = c.delete("rv/none", None).await?;
    assert_eq!(del.deleted(), 0);
    assert_eq!(del.header().map(|h| h.revision()), Some(before));

    // Reads at an old revision see the old value.
    let old = c
        .get("rv/a", Some(GetOptions::new().with_revision(r1)))
        .await?;
    assert_eq!(old.kvs()[0].value(), b"1");
    let gone = c
        .get("rv/a", Some(GetOptions::new().with_revision(r4 - 1)))
        .await?;
    assert_eq!(
        gone.count(),
        0,
        "the key did not exist between delete and re-put"
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn range_options() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let mut c = etcd(&cluster, 1).await?;
    for k in ["r/a", "r/b", "r/c", "r/d", "s/x"] {
        c.put(k, format!("val-{k}"), None).await?;
    }
    let r = c
        .get("r/", Some(GetOptions::new().with_prefix().with_limit(2)))
        .await?;
    assert_eq!((r.kvs().len(), r.count(), r.more()), (2, 4, true));
    let r = c
        .get("r/c", Some(GetOptions::new().with_from_key()))
        .await?;
    let keys: Vec<&[u8]> = r.kvs().iter().map(|kv| kv.key()).collect();
    assert_eq!(keys, vec![&b"r/c"[..], b"r/d", b"s/x"]);
    let r = c
        .get("r/", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await?;
    assert!(r.kvs().iter().all(|kv| kv.value().is_empty()));
    let r = c
        .get(
            "r/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await?;
    assert_eq!((r.kvs().len(), r.count()), (0, 4));
    let r = c
        .get(
            "r/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Key, SortOrder::Descend),
            ),
        )
        .await?;
    assert_eq!(r.kvs()[0].key(), b"r/d");
    let r = c
        .get("r/b", Some(GetOptions::new().with_range("r/d")))
        .await?;
    assert_eq!(r.count(), 2);
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn txn_compare_and_swap() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let mut c = etcd(&cluster, 3).await?;
    // put-if-absent (python etcd3's put_if_not_exists): compare create_revision == 0.
    let txn = Txn::new()
        .when([Compare::create_revision("cas/k", CompareOp::Equal, 0)])
        .and_then([
            TxnOp::put("cas/k", "first", None),
            TxnOp::put("cas/other", "x", None),
        ])
        .or_else([TxnOp::get("cas/k", None)]);
    let r = c.txn(txn.clone()).await?;
    assert!(r.succeeded());
    let rev = r.header().map(|h| h.revision()).unwrap_or_default();
    let a = c.get("cas/k", None).await?.kvs()[0].clone();
    let b = c.get("cas/other", None).await?.kvs()[0].clone();
    assert_eq!(
        (a.mod_revision(), b.mod_revision()),
        (rev, rev),
        "one txn, one revision"
    );

    let r = c.txn(txn).await?;
    assert!(!r.succeeded(), "second put-if-absent fails");
    assert_eq!(
        r.header().map(|h| h.revision()),
        Some(rev),
        "a failed read-only branch changes nothing"
    );

    // CAS on value.
    let swap = Txn::new()
        .when([Compare::value("cas/k", CompareOp::Equal, "first")])
        .and_then([TxnOp::put("cas/k", "second", None)]);
    assert!(c.txn(swap.clone()).await?.succeeded());
    assert!(!c.txn(swap).await?.succeeded());
    let v = c.get("cas/k", None).await?.kvs()[0].value().to_vec();
    assert_eq!(v, b"second");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_discards_old_revisions() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let mut c = etcd(&cluster, 1).await?;
    let r1 = c
        .put("cmp/k", "1", None)
        .await?
        .header()
        .map(|h| h.revision())
        .unwrap_or_default();
    let r2 = c
        .put("cmp/k", "2", None)
        .await?
        .header()
        .map(|h| h.revision())
        .unwrap_or_default();
    c.put("cmp/k", "3", None).await?;
    c.compact(r2, None).await?;
    for id in cluster.ids() {
        let mut c = etcd(&cluster, id).await?;
        let err = c
            .get("cmp/k", Some(GetOptions::new().with_revision(r1)))
            .await
            .expect_err("compacted");
        let s = status(err)?;
        assert_eq!(s.code(), tonic::Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let at = c
            .get("cmp/k", Some(GetOptions::new().with_revision(r2)))
            .await?;
        assert_eq!(
            at.kvs()[0].value(),
            b"2",
            "the compact revision itself stays readable"
        );
    }
    let s = status(c.compact(r1, None).await.expect_err("already compacted"))?;
    assert_eq!(s.code(), tonic::Code::OutOfRange);
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_write_with_a_request_id_applies_once() -> anyhow::Result<()> {
    use muster_proto::etcdserverpb::{kv_client::KvClient, PutRequest};
    let cluster = Cluster::start(3).await?;
    let mut kv = KvClient::connect(format!("http://{}", cluster.addr(2))).await?;
    let put = |value: &str| {
        let mut r = tonic::Request::new(PutRequest {
            key: b"idem/k".to_vec(),
            value: value.into(),
            ..Default::default()
        });
        r.metadata_mut().insert(
            "x-muster-request-id",
            "client-7-op-1".parse().expect("ascii"),
        );
        r
    };
    let first = kv.put(put("v")).await?.into_inner();
    // The same logical request again (a retry after an unknown outcome): not applied twice.
    let again = kv.put(put("v")).await?.into_inner();
    assert_eq!(
        first.header.map(|h| h.revision),
        again.header.map(|h| h.revision)
    );
    let mut c = etcd(&cluster, 1).await?;
    let got = c.get("idem/k", None).await?;
    assert_eq!(
        (got.kvs()[0].version(), got.header().map(|h| h.revision())),
        (1, first.header.map(|h| h.revision))
    );
    cluster.shutdown().await;
    Ok(())
}

/// Concurrent writes through every node are batched (proposal batching on the leader, forward
/// batching on followers) and yet each gets its own revision: the acknowledged revisions are
/// exactly the next N, each key's value and mod revision match its put's answer on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_are_batched_yet_each_gets_its_own_revision() -> anyhow::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    const PER_NODE: usize = 100;
    let cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let start_rev = {
        let mut c = etcd(&cluster, leader).await?;
        c.put("batch/start", "x", None)
            .await?
            .header()
            .map(|h| h.revision())
            .unwrap_or(0)
    };
    let mut tasks = Vec::new();
    for id in cluster.ids() {
        let c = etcd(&cluster, id).await?;
        for i in 0..PER_NODE {
            let mut c = c.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("batch/{id}/{i}");
                let r = c.put(key.clone(), format!("v{id}-{i}"), None).await?;
                anyhow::Ok((key, r.header().map(|h| h.revision()).unwrap_or(0)))
            }));
        }
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.push(t.await??);
    }
    let mut revs: Vec<i64> = acked.iter().map(|(_, r)| *r).collect();
    revs.sort_unstable();
    let want: Vec<i64> = (start_rev + 1..=start_rev + revs.len() as i64).collect();
    assert_eq!(revs, want, "every put has its own revision, none skipped");
    cluster.wait_converged(T).await?;
    for id in cluster.ids() {
        let mut c = etcd(&cluster, id).await?;
        for (key, rev) in &acked {
            let r = c
                .get(key.as_str(), Some(GetOptions::new().with_serializable()))
                .await?;
            let kv = r
                .kvs()
                .first()
                .ok_or_else(|| anyhow::anyhow!("{key} missing on {id}"))?;
            assert_eq!(kv.mod_revision(), *rev, "{key} on node {id}");
            assert_eq!(kv.version(), 1);
        }
    }
    let node = cluster.node(leader)?;
    let (commands, entries) = (
        node.proposal_stats().commands.load(Relaxed),
        node.proposal_stats().sends.load(Relaxed),
    );
    assert!(
        entries < commands,
        "300 concurrent puts went into fewer log entries ({entries}) than commands ({commands})"
    );
    let (forwarded, calls): (u64, u64) = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
        .map(|id| {
            let s = cluster.node(id).map(|n| n.forward_stats());
            s.map(|s| (s.commands.load(Relaxed), s.sends.load(Relaxed)))
                .unwrap_or((0, 0))
        })
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert_eq!(
        forwarded,
        2 * PER_NODE as u64,
        "followers forwarded their writes"
    );
    assert!(
        calls < forwarded,
        "forwards were batched: {calls} calls for {forwarded} writes"
    );
    Ok(())
}

/// Concurrent linearizable reads share read-index rounds, on the leader and on a follower, and
/// each still sees the write acknowledged before it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_linearizable_reads_share_rounds_and_see_prior_writes() -> anyhow::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    const READERS: usize = 50;
    const ROUNDS: usize = 5;
    let cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let mut writer = etcd(&cluster, leader).await?;
    let follower = cluster.follower_of(leader);
    let readers = [
        (leader, etcd(&cluster, leader).await?),
        (follower, etcd(&cluster, follower).await?),
    ];
    for round in 0..ROUNDS {
        let want = format!("v{round}");
        writer.put("lin/k", want.clone(), None).await?;
        let mut tasks = Vec::new();
        for (id, client) in &readers {
            for _ in 0..READERS {
                let (mut c, id) = (client.clone(), *id);
                tasks.push(tokio::spawn(async move {
                    let r = c.get("lin/k", None).await?;
                    let got = r.kvs().first().map(|kv| kv.value().to_vec());
                    anyhow::Ok((id, got))
                }));
            }
        }
        for t in tasks {
            let (id, got) = t.await??;
            assert_eq!(
                got.as_deref(),
                Some(want.as_bytes()),
                "a linearizable read on node {id} missed the write acknowledged before it"
            );
        }
    }
    for (id, _) in &readers {
        let stats = cluster.node(*id)?.read_round_stats();
        let (reads, rounds) = (stats.reads.load(Relaxed), stats.rounds.load(Relaxed));
        assert!(
            reads >= (READERS * ROUNDS) as u64,
            "node {id} counted {reads} reads"
        );
        assert!(
            rounds < reads,
            "node {id}: {reads} concurrent reads shared {rounds} rounds"
        );
    }
    cluster.shutdown().await;
    Ok(())
}
