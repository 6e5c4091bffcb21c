//! Regression tests for back-pressure (issue 13, item 4): bounded queues, the client port's
//! concurrency bound, deadlines on every wait, and forwards that fail together.
//!
//! Before the fix the proposal, forward and read-index queues and the client port were
//! unbounded, a forward waited up to 10 s for its answer whatever `leader_wait` said, a read
//! barrier had no deadline, and concurrent forwards to a leader that never answered opened the
//! stream one after another under a lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use muster_proto::etcdserverpb::kv_client::KvClient;
use muster_proto::etcdserverpb::watch_client::WatchClient;
use muster_proto::etcdserverpb::{
    watch_request, PutRequest, RangeRequest, WatchCreateRequest, WatchRequest,
};
use muster_server::config::BackpressureConfig;
use muster_tests::{wait_until, Cluster};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Code;
use tracing::info;

const T: Duration = Duration::from_secs(10);
const TOO_MANY: &str = "etcdserver: too many requests";

async fn channel(cluster: &Cluster, id: u64) -> anyhow::Result<Channel> {
    Ok(
        Channel::from_shared(format!("http://{}", cluster.addr(id)))?
            .connect()
            .await?,
    )
}

/// A request that tells the server its deadline (`grpc-timeout`) when given one.
fn with_deadline<M>(msg: M, timeout: Option<Duration>) -> tonic::Request<M> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = timeout {
        r.set_timeout(t);
    }
    r
}

/// Puts `key` with itself as the value.
async fn put(
    kv: &mut KvClient<Channel>,
    key: &str,
    timeout: Option<Duration>,
) -> Result<(), tonic::Status> {
    let req = PutRequest {
        key: key.as_bytes().to_vec(),
        value: key.as_bytes().to_vec(),
        ..Default::default()
    };
    kv.put(with_deadline(req, timeout)).await.map(|_| ())
}

async fn get(
    kv: &mut KvClient<Channel>,
    key: &str,
    serializable: bool,
    timeout: Option<Duration>,
) -> Result<(), tonic::Status> {
    let req = RangeRequest {
        key: key.as_bytes().to_vec(),
        serializable,
        ..Default::default()
    };
    kv.range(with_deadline(req, timeout)).await.map(|_| ())
}

/// Outcomes of the overload run.
#[derive(Default, Debug)]
struct Counts {
    ok: AtomicUsize,
    too_many: AtomicUsize,
    unavailable: AtomicUsize,
    deadline: AtomicUsize,
    /// Calls still unanswered well past their own deadline.
    hung: AtomicUsize,
    other: AtomicUsize,
}

impl Counts {
    fn record(&self, r: &Result<(), tonic::Status>) {
        let c = match r {
            Ok(()) => &self.ok,
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert_eq!(s.message(), TOO_MANY, "{s:?}");
                &self.too_many
            }
            Err(s) if s.code() == Code::Unavailable => &self.unavailable,
            // The client's own deadline (tonic reports it as Cancelled "Timeout expired").
            Err(s) if matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled) => {
                &self.deadline
            }
            Err(s) => {
                tracing::warn!("unexpected status: {s:?}");
                &self.other
            }
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

fn n(c: &AtomicUsize) -> usize {
    c.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_is_refused_at_once_and_loses_no_acknowledged_write() -> anyhow::Result<()> {
    const TASKS: usize = 600;
    const OPS_PER_TASK: usize = 4;
    const CONNECTIONS_PER_NODE: usize = 2;
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
    // A call unanswered this long after its deadline counts as hung.
    const HANG_SLACK: Duration = Duration::from_secs(2);
    const LOAD_WINDOW: Duration = Duration::from_secs(40);
    let cluster = Cluster::start_with(3, |c| {
        // Each node's two connections may bring 64 calls to its door of 32; the leader's
        // queue of 48 also takes the followers' forwards.
        c.backpressure = BackpressureConfig {
            queue_commands: 48,
            queue_bytes: 64 << 10,
            read_queue: 16,
            max_concurrent_requests: 32,
            max_concurrent_requests_per_connection: 32,
        };
        c.leader_wait = Duration::from_secs(3);
    })
    .await?;
    let leader = cluster.wait_for_leader(T).await?;
    let term = cluster.node(leader)?.term();

    info!(
        "--- step: {TASKS} clients × {OPS_PER_TASK} calls over {} connections",
        3 * CONNECTIONS_PER_NODE
    );
    let mut channels = Vec::new();
    for id in cluster.ids() {
        for _ in 0..CONNECTIONS_PER_NODE {
            channels.push(channel(&cluster, id).await?);
        }
    }
    let counts = Arc::new(Counts::default());
    let load_end = Instant::now() + LOAD_WINDOW;
    let mut tasks = Vec::with_capacity(TASKS);
    for t in 0..TASKS {
        let mut kv = KvClient::new(channels[t % channels.len()].clone());
        let counts = counts.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..OPS_PER_TASK {
                if Instant::now() >= load_end {
                    break;
                }
                let key = format!("ov/{t:04}/{i}");
                let call = async {
                    if i % 2 == 0 {
                        put(&mut kv, &key, Some(REQUEST_TIMEOUT)).await
                    } else {
                        get(&mut kv, &key, false, Some(REQUEST_TIMEOUT)).await
                    }
                };
                match tokio::time::timeout(REQUEST_TIMEOUT + HANG_SLACK, call).await {
                    Err(_) => {
                        counts.hung.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        counts.record(&r);
                        if r.is_ok() && i % 2 == 0 {
                            acked.push(key);
                        }
                    }
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await?);
    }
    let c = &counts;
    let refused_at_door: u64 = cluster
        .running()
        .iter()
        .filter_map(|id| cluster.node(*id).ok())
        .map(|node| node.client_permits().refused.load(Ordering::Relaxed))
        .sum();
    info!(
        ok = n(&c.ok),
        too_many = n(&c.too_many),
        unavailable = n(&c.unavailable),
        deadline = n(&c.deadline),
        hung = n(&c.hung),
        other = n(&c.other),
        acked_writes = acked.len(),
        refused_at_door,
        "overload outcomes"
    );
    assert_eq!(n(&c.hung), 0, "calls must end by their deadline: {c:?}");
    assert_eq!(n(&c.other), 0, "only clean statuses: {c:?}");
    assert!(
        n(&c.too_many) > 0,
        "the bounds must refuse some calls: {c:?}"
    );
    assert!(
        refused_at_door > 0,
        "the client port's global bound refused none"
    );
    assert!(!acked.is_empty(), "some writes must succeed: {c:?}");

    info!("--- step: every acknowledged write is readable; leader and term unchanged");
    cluster.wait_converged(T).await?;
    let mut kv = KvClient::new(channel(&cluster, leader).await?);
    let all = kv
        .range(RangeRequest {
            key: b"ov/".to_vec(),
            range_end: b"ov0".to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let stored: HashMap<Vec<u8>, Vec<u8>> =
        all.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
    for key in &acked {
        assert_eq!(
            stored.get(key.as_bytes()).map(Vec::as_slice),
            Some(key.as_bytes()),
            "acknowledged write {key} lost"
        );
    }
    assert_eq!(cluster.agreed_leader(), Some(leader), "the leader changed");
    assert_eq!(cluster.node(leader)?.term(), term, "the term changed");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwards_to_a_black_holed_leader_fail_together_within_leader_wait() -> anyhow::Result<()> {
    const WRITES: usize = 16;
    const LEADER_WAIT: Duration = Duration::from_secs(2);
    let cluster = Cluster::start_with(3, |c| c.leader_wait = LEADER_WAIT).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let follower = cluster.follower_of(leader);
    let ch = channel(&cluster, follower).await?;
    // The forward stream is open before the fault, as in a running cluster.
    put(&mut KvClient::new(ch.clone()), "bh/warm", None).await?;

    info!("--- step: {WRITES} writes through node {follower}, its calls to the leader black-holed");
    cluster.black_hole(follower, leader)?;
    let started = Instant::now();
    let writes: Vec<_> = (0..WRITES)
        .map(|i| {
            let mut kv = KvClient::new(ch.clone());
            tokio::spawn(async move {
                // No client deadline: only the server's own bounds end these calls.
                let r = tokio::time::timeout(T, put(&mut kv, &format!("bh/{i}"), None)).await;
                (r, started.elapsed())
            })
        })
        .collect();
    let mut took = Vec::new();
    for w in writes {
        let (r, elapsed) = w.await?;
        let status = r
            .map_err(|_| anyhow::anyhow!("a write hung for {T:?}"))?
            .err()
            .ok_or_else(|| anyhow::anyhow!("a write through a black hole succeeded"))?;
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().starts_with("etcdserver: "),
            "etcd's text: {status:?}"
        );
        took.push(elapsed);
    }
    took.sort();
    let (first, last) = (took[0], took[WRITES - 1]);
    info!(?first, ?last, "forwards failed");
    assert!(
        last <= LEADER_WAIT + Duration::from_millis(1500),
        "the last write failed after {last:?}, leader_wait is {LEADER_WAIT:?}"
    );
    assert!(
        last - first <= Duration::from_secs(1),
        "completions spread from {first:?} to {last:?}: serialised"
    );

    info!("--- step: healed, the next write through the follower succeeds at once");
    cluster.heal();
    let t = Instant::now();
    put(
        &mut KvClient::new(ch.clone()),
        "bh/after",
        Some(LEADER_WAIT),
    )
    .await?;
    info!(took = ?t.elapsed(), "first write after heal");
    let mut kv = KvClient::new(channel(&cluster, leader).await?);
    get(&mut kv, "bh/after", false, None).await?;
    assert_eq!(cluster.agreed_leader(), Some(leader));
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_linearizable_read_on_a_cut_off_node_fails_within_leader_wait() -> anyhow::Result<()> {
    const LEADER_WAIT: Duration = Duration::from_secs(2);
    let cluster = Cluster::start_with(3, |c| c.leader_wait = LEADER_WAIT).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let cut = cluster.follower_of(leader);
    let mut kv = KvClient::new(channel(&cluster, cut).await?);
    put(&mut kv, "cut/k", None).await?;
    get(&mut kv, "cut/k", false, None).await?;

    info!("--- step: node {cut} black-holed both ways; a linearizable read through it");
    for other in cluster.ids().into_iter().filter(|id| *id != cut) {
        cluster.black_hole(cut, other)?;
        cluster.black_hole(other, cut)?;
    }
    let started = Instant::now();
    let r = tokio::time::timeout(T, get(&mut kv, "cut/k", false, None))
        .await
        .map_err(|_| anyhow::anyhow!("the read hung for {T:?}"))?;
    let took = started.elapsed();
    let status = r
        .err()
        .ok_or_else(|| anyhow::anyhow!("a cut-off node served a linearizable read"))?;
    info!(?took, %status, "linearizable read on the cut-off node");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        took <= LEADER_WAIT + Duration::from_millis(1000),
        "the read failed after {took:?}, leader_wait is {LEADER_WAIT:?}"
    );
    // The node itself still serves what needs no quorum.
    get(&mut kv, "cut/k", true, Some(LEADER_WAIT)).await?;

    info!("--- step: healed, linearizable reads through it work again");
    cluster.heal();
    wait_until(T, "a linearizable read on the healed node", || {
        let mut kv = kv.clone();
        async move { get(&mut kv, "cut/k", false, None).await.ok() }
    })
    .await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_global_bound_refuses_at_once_and_open_streams_do_not_hold_it() -> anyhow::Result<()> {
    const LEADER_WAIT: Duration = Duration::from_secs(3);
    const STREAMS: usize = 6;
    let cluster = Cluster::start_with(3, |c| {
        c.backpressure.max_concurrent_requests = 2;
        c.leader_wait = LEADER_WAIT;
    })
    .await?;
    let leader = cluster.wait_for_leader(T).await?;
    let follower = cluster.follower_of(leader);
    let ch = channel(&cluster, follower).await?;

    info!("--- step: {STREAMS} watch streams open on node {follower} (bound: 2 calls)");
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: b"gb/k".to_vec(),
                    ..Default::default()
                },
            )),
        })
        .await?;
        let mut replies = WatchClient::new(ch.clone())
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let created = replies
            .message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("watch ended"))?;
        assert!(created.created);
        streams.push((tx, replies));
    }
    let mut kv = KvClient::new(ch.clone());
    put(&mut kv, "gb/k", None).await?;
    for (_, replies) in &mut streams {
        let event = tokio::time::timeout(T, replies.message())
            .await??
            .ok_or_else(|| anyhow::anyhow!("watch ended"))?;
        assert_eq!(event.events.len(), 1, "every stream sees the put");
    }

    info!("--- step: two writes hang on a black-holed leader; a third call is refused at once");
    cluster.black_hole(follower, leader)?;
    let node = cluster.node(follower)?.clone();
    let forwarded = || node.forward_stats().commands.load(Ordering::Relaxed);
    let before = forwarded();
    let hanging: Vec<_> = (0..2)
        .map(|i| {
            let mut kv = KvClient::new(ch.clone());
            tokio::spawn(async move { put(&mut kv, &format!("gb/hang{i}"), None).await })
        })
        .collect();
    // Both are past the door once the follower has queued them for the leader.
    wait_until(T, "both writes forwarded", || async {
        (forwarded() >= before + 2).then_some(())
    })
    .await?;
    let started = Instant::now();
    let status = get(&mut kv, "gb/k", true, None)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a call past the global bound was served"))?;
    let took = started.elapsed();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), TOO_MANY);
    assert!(took < Duration::from_millis(500), "refused after {took:?}");
    assert_eq!(
        node.client_permits().in_use(),
        2,
        "the two writes hold the bound"
    );
    for h in hanging {
        let status = h
            .await?
            .err()
            .ok_or_else(|| anyhow::anyhow!("a write through a black hole succeeded"))?;
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    cluster.heal();
    get(&mut kv, "gb/k", true, None).await?;
    cluster.shutdown().await;
    Ok(())
}
