//! The Watch API surface on a real cluster: create options (single key, prefix, from-key,
//! start revision in the past and future, filters, prev_kv), watch ids (client-chosen,
//! server-assigned, duplicates), cancel, progress requests, compaction, the per-stream watcher
//! limit, fragments, and `hasleader`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use etcd_client::{
    ConnectOptions, EventType, Txn, TxnOp, WatchFilterType, WatchOptions, WatchResponse,
    WatchStream,
};
use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::watch_client::WatchClient;
use muster_server::NodeConfig;
use muster_tests::{etcd, status, Cluster};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tracing::info;

const T: Duration = Duration::from_secs(15);

async fn next(stream: &mut WatchStream) -> anyhow::Result<WatchResponse> {
    match tokio::time::timeout(T, stream.message()).await {
        Ok(Ok(Some(r))) => Ok(r),
        Ok(Ok(None)) => bail!("watch stream ended"),
        Ok(Err(e)) => Err(e).context("watch stream failed"),
        Err(_) => bail!("no watch response within {T:?}"),
    }
}

/// (revision, key, is_put, prev value) of a response's events.
fn evs(r: &WatchResponse) -> Vec<(i64, String, bool, Option<String>)> {
    r.events()
        .iter()
        .filter_map(|e| {
            let kv = e.kv()?;
            Some((
                kv.mod_revision(),
                String::from_utf8_lossy(kv.key()).into_owned(),
                e.event_type() == EventType::Put,
                e.prev_kv()
                    .map(|p| String::from_utf8_lossy(p.value()).into_owned()),
            ))
        })
        .collect()
}

/// Everything a stream delivered, by watch id.
#[derive(Default)]
struct Seen {
    /// (watch id, canceled, cancel reason) of each `created` reply, in order.
    created: Vec<(i64, bool, String)>,
    events: BTreeMap<i64, Vec<(i64, String, bool)>>,
    /// prev values seen by watcher 2.
    prevs: Vec<Option<String>>,
}

impl Seen {
    fn add(&mut self, r: &WatchResponse) {
        if r.created() {
            self.created
                .push((r.watch_id(), r.canceled(), r.cancel_reason().to_string()));
        }
        for (rv, key, put, prev) in evs(r) {
            if r.watch_id() == 2 {
                self.prevs.push(prev);
            }
            self.events
                .entry(r.watch_id())
                .or_default()
                .push((rv, key, put));
        }
    }

    fn event_count(&self) -> usize {
        self.events.values().map(Vec::len).sum()
    }
}

fn rev(r: &etcd_client::PutResponse) -> i64 {
    r.header().map(|h| h.revision()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_options_ids_cancel_progress_and_compaction() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let follower = cluster.follower_of(leader);
    let mut kv = etcd(&cluster, leader).await?;
    let r0 = rev(&kv.put("o/a", "1", None).await?);
    // "From now" means from the serving member's applied revision: let the follower reach r0.
    cluster.wait_converged(T).await?;

    info!("--- step: creates on follower {follower}; replies in request order");
    let mut c = etcd(&cluster, follower).await?;
    let mut s = c
        .watch("o/a", Some(WatchOptions::new().with_watch_id(7)))
        .await?;
    let opts = |o: WatchOptions| Some(o);
    s.watch("o/a", opts(WatchOptions::new().with_watch_id(7)))
        .await?;
    s.watch("o/", opts(WatchOptions::new().with_prefix()))
        .await?;
    s.watch(
        "o/",
        opts(
            WatchOptions::new()
                .with_prefix()
                .with_filters([WatchFilterType::NoPut]),
        ),
    )
    .await?;
    let no_delete = WatchOptions::new()
        .with_prefix()
        .with_filters([WatchFilterType::NoDelete])
        .with_prev_key();
    s.watch("o/", opts(no_delete)).await?;
    s.watch("o/m", opts(WatchOptions::new().with_from_key()))
        .await?;
    s.watch("o/a", opts(WatchOptions::new().with_start_revision(r0)))
        .await?;
    s.watch("o/f", opts(WatchOptions::new().with_start_revision(r0 + 4)))
        .await?;
    s.watch("o/z", opts(WatchOptions::new().with_range("o/a")))
        .await?;

    let mut seen = Seen::default();
    while seen.created.len() < 9 {
        seen.add(&next(&mut s).await?);
    }
    let created = seen.created.clone();
    let ids: Vec<i64> = created.iter().map(|c| c.0).collect();
    assert_eq!(ids, vec![7, -1, 0, 1, 2, 3, 4, 5, -1], "{created:?}");
    assert!(
        created[1].1 && created[1].2.contains("duplicate watch ID"),
        "{created:?}"
    );
    assert!(
        created[8].1 && created[8].2.contains("range is empty"),
        "{created:?}"
    );
    assert!(created.iter().filter(|c| c.0 >= 0).all(|c| !c.1));

    info!("--- step: writes; each watcher gets exactly its events");
    let r1 = rev(&kv.put("o/a", "2", None).await?);
    let r2 = kv
        .delete("o/a", None)
        .await?
        .header()
        .map(|h| h.revision())
        .unwrap_or_default();
    let r3 = rev(&kv.put("o/n", "n", None).await?);
    let r4 = rev(&kv.put("o/f", "f1", None).await?);
    let r5 = rev(&kv.put("o/f", "f2", None).await?);
    assert_eq!((r1, r5), (r0 + 1, r0 + 5));
    let (a, n, f) = ("o/a".to_string(), "o/n".to_string(), "o/f".to_string());
    let expected: BTreeMap<i64, Vec<(i64, String, bool)>> = [
        (7, vec![(r1, a.clone(), true), (r2, a.clone(), false)]),
        (
            0,
            vec![
                (r1, a.clone(), true),
                (r2, a.clone(), false),
                (r3, n.clone(), true),
                (r4, f.clone(), true),
                (r5, f.clone(), true),
            ],
        ),
        (1, vec![(r2, a.clone(), false)]),
        (
            2,
            vec![
                (r1, a.clone(), true),
                (r3, n.clone(), true),
                (r4, f.clone(), true),
                (r5, f.clone(), true),
            ],
        ),
        (3, vec![(r3, n.clone(), true)]),
        (
            4,
            vec![
                (r0, a.clone(), true),
                (r1, a.clone(), true),
                (r2, a.clone(), false),
            ],
        ),
        (5, vec![(r4, f.clone(), true), (r5, f.clone(), true)]),
    ]
    .into_iter()
    .collect();
    let want: usize = expected.values().map(Vec::len).sum();
    while seen.event_count() < want {
        seen.add(&next(&mut s).await?);
    }
    assert_eq!(seen.events, expected);
    let prevs = &seen.prevs;
    assert_eq!(prevs[0].as_deref(), Some("1"), "prev_kv on request");
    assert_eq!(prevs[3].as_deref(), Some("f1"));

    info!("--- step: cancel, then progress request");
    s.cancel(0).await?;
    let r = next(&mut s).await?;
    assert!(r.canceled() && r.watch_id() == 0, "{r:?}");
    let r6 = rev(&kv.put("o/a", "3", None).await?);
    let r = next(&mut s).await?;
    assert_ne!(r.watch_id(), 0, "a cancelled watcher gets nothing");
    s.request_progress().await?;
    let progress = loop {
        let r = next(&mut s).await?;
        assert_ne!(r.watch_id(), 0);
        if r.watch_id() == -1 {
            break r;
        }
    };
    assert!(progress.events().is_empty());
    assert!(progress.header().map(|h| h.revision()).unwrap_or_default() >= r6);
    let h = progress.header().context("header")?;
    assert_eq!(h.member_id(), follower, "headers carry the serving member");
    assert!(h.cluster_id() != 0 && h.raft_term() >= 1);

    info!("--- step: a start revision below the compaction is cancelled with compact_revision");
    kv.compact(r3, None).await?;
    // Watches are served from the member's own applied state: let the follower apply it.
    cluster.wait_converged(T).await?;
    let mut c = etcd(&cluster, follower).await?;
    let mut s = c
        .watch("o/a", Some(WatchOptions::new().with_start_revision(r0)))
        .await?;
    let created = next(&mut s).await?;
    assert!(created.created(), "{created:?}");
    let cancelled = next(&mut s).await?;
    assert!(
        cancelled.canceled() && cancelled.compact_revision() == r3,
        "{cancelled:?}"
    );
    let mut s = c
        .watch(
            "o/",
            Some(WatchOptions::new().with_prefix().with_start_revision(r3)),
        )
        .await?;
    assert!(next(&mut s).await?.created());
    let first = next(&mut s).await?;
    assert_eq!(
        evs(&first).first().map(|e| e.0),
        Some(r3),
        "the compact revision itself is readable"
    );
    cluster.shutdown().await;
    Ok(())
}

/// A raw bidi stream on node `id` (for fields etcd-client does not expose, like `fragment`).
async fn raw_watch(
    cluster: &Cluster,
    id: u64,
) -> anyhow::Result<(
    tokio::sync::mpsc::Sender<pb::WatchRequest>,
    tonic::Streaming<pb::WatchResponse>,
)> {
    let mut client = WatchClient::connect(format!("http://{}", cluster.addr(id))).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let stream = client.watch(ReceiverStream::new(rx)).await?.into_inner();
    Ok((tx, stream))
}

fn create(key: &str, range_end: &str, watch_id: i64, fragment: bool) -> pb::WatchRequest {
    pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: key.as_bytes().to_vec(),
                range_end: range_end.as_bytes().to_vec(),
                watch_id,
                fragment,
                ..Default::default()
            },
        )),
    }
}

async fn raw_next(
    s: &mut tonic::Streaming<pb::WatchResponse>,
) -> anyhow::Result<pb::WatchResponse> {
    match tokio::time::timeout(T, s.message()).await {
        Ok(Ok(Some(r))) => Ok(r),
        other => bail!("no watch response: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watcher_limit_and_fragments() -> anyhow::Result<()> {
    const MAX_RESPONSE: usize = 2048;
    let cluster = Cluster::start_with(3, |c| {
        c.watch.max_watchers_per_stream = 3;
        c.watch.max_response_bytes = MAX_RESPONSE;
    })
    .await?;
    let (tx, mut s) = raw_watch(&cluster, 2).await?;
    info!("--- step: the fourth watcher on a stream is refused with a reason");
    tx.send(create("f/", "f0", 1, true)).await?;
    tx.send(create("f/", "f0", 2, false)).await?;
    tx.send(create("x", "", 3, false)).await?;
    tx.send(create("y", "", 4, false)).await?;
    let mut replies = Vec::new();
    for _ in 0..4 {
        let r = raw_next(&mut s).await?;
        replies.push((r.watch_id, r.created, r.canceled, r.cancel_reason));
    }
    assert_eq!(
        replies[..3].iter().map(|r| (r.0, r.2)).collect::<Vec<_>>(),
        vec![(1, false), (2, false), (3, false)]
    );
    let (id, created, canceled, reason) = &replies[3];
    assert!(*id == -1 && *created && *canceled, "{replies:?}");
    assert!(
        reason.contains("too many watchers") && reason.contains("limit 3"),
        "{reason}"
    );

    info!("--- step: a revision larger than the response limit: fragments only on request");
    let mut kv = etcd(&cluster, 1).await?;
    let value = "v".repeat(400);
    let ops: Vec<TxnOp> = (0..20)
        .map(|j| TxnOp::put(format!("f/{j:02}"), value.clone(), None))
        .collect();
    let txn_rev = kv
        .txn(Txn::new().and_then(ops))
        .await?
        .header()
        .map(|h| h.revision())
        .unwrap_or_default();
    let mut by_id: BTreeMap<i64, Vec<(usize, bool)>> = BTreeMap::new();
    let mut keys: BTreeMap<i64, Vec<Vec<u8>>> = BTreeMap::new();
    while keys.values().map(Vec::len).sum::<usize>() < 40 {
        let r = raw_next(&mut s).await?;
        let payload: usize = r
            .events
            .iter()
            .filter_map(|e| e.kv.as_ref())
            .map(|kv| kv.key.len() + kv.value.len())
            .sum();
        by_id
            .entry(r.watch_id)
            .or_default()
            .push((payload, r.fragment));
        for e in &r.events {
            let kv = e.kv.as_ref().context("kv")?;
            assert_eq!(kv.mod_revision, txn_rev);
            keys.entry(r.watch_id).or_default().push(kv.key.clone());
        }
    }
    let fragments = &by_id[&1];
    assert!(fragments.len() > 1, "{fragments:?}");
    let (last, rest) = fragments.split_last().context("fragments")?;
    assert!(
        rest.iter().all(|f| f.1) && !last.1,
        "all but the last flagged: {fragments:?}"
    );
    assert!(
        fragments.iter().all(|f| f.0 <= MAX_RESPONSE),
        "{fragments:?}"
    );
    assert_eq!(
        by_id[&2].len(),
        1,
        "without fragment the revision goes whole"
    );
    assert!(!by_id[&2][0].1);
    let expected: Vec<Vec<u8>> = (0..20).map(|j| format!("f/{j:02}").into_bytes()).collect();
    assert_eq!(keys[&1], expected);
    assert_eq!(keys[&2], expected);
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hasleader_streams_need_a_leader() -> anyhow::Result<()> {
    // A node whose cluster never formed: it waits for node 1 (which never starts) to
    // initialise, so it knows no leader.
    muster_testkit::init_tracing();
    let dir = tempfile_dir()?;
    let listeners = muster_server::Listeners {
        client: tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        peer: tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    };
    let addr = listeners.client.local_addr()?;
    let peer = listeners.peer.local_addr()?.to_string();
    let token = dir.join("peer-token");
    muster_server::peer_auth::write_private(
        &token,
        &muster_server::peer_auth::PeerToken::random_text(),
    )?;
    let config = NodeConfig {
        node_id: 2,
        data_dir: dir.join("node2"),
        listen: addr,
        peer_token_file: Some(token),
        initial_cluster: [(1, "127.0.0.1:1".to_string()), (2, peer)].into(),
        raft: muster_server::config::RaftTiming::fast_for_tests(),
        ..Default::default()
    };
    let server = muster_server::start_with_listeners(config, listeners).await?;
    assert_eq!(server.node.current_leader(), None);
    let ep = format!("http://{addr}");

    let opts = ConnectOptions::new().with_require_leader(true);
    let mut c = etcd_client::Client::connect([ep.clone()], Some(opts)).await?;
    let err = match c.watch("k", None).await {
        Ok(mut s) => next(&mut s)
            .await
            .err()
            .context("a stream without a leader")?,
        Err(e) => anyhow::Error::from(e),
    };
    let code = err
        .downcast::<etcd_client::Error>()
        .ok()
        .and_then(|e| status(e).ok())
        .map(|s| (s.code(), s.message().to_string()));
    assert_eq!(
        code,
        Some((
            tonic::Code::Unavailable,
            "etcdserver: no leader".to_string()
        ))
    );

    // Without the metadata, a node serves watches of its own applied state regardless.
    let mut c = etcd_client::Client::connect([ep], None).await?;
    let mut s = c.watch("k", None).await?;
    assert!(next(&mut s).await?.created());
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("muster-t42-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
