//! Regression tests for the trust boundary between clients and peers (issue 13, defect 1):
//! Raft traffic is served only on the peer port, only to callers holding the cluster's peer
//! secret, and a forwarded command is validated on the leader like a client's.
//!
//! Before the fix, `RaftTransport` was served on the client port to anyone: a 10-byte
//! `NotifyRemoved` call stopped the node it named, and a forwarded `LeaseExpire` was proposed
//! as is.

use std::time::Duration;

use muster_proto::raftpb::raft_transport_client::RaftTransportClient;
use muster_proto::raftpb::RaftPayload;
use muster_server::error::RaftPathError;
use muster_server::peer_auth::PEER_TOKEN_HEADER;
use muster_store::raft::LogId;
use muster_tests::{etcd, wait_until, Cluster};
use muster_types::{Command, CommandResponse, PutRequest};
use tonic::transport::Channel;
use tracing::info;

const T: Duration = Duration::from_secs(10);

fn payload<T: serde::Serialize>(v: &T) -> anyhow::Result<RaftPayload> {
    Ok(RaftPayload {
        data: bincode::serialize(v)?,
    })
}

async fn raft_client(addr: std::net::SocketAddr) -> anyhow::Result<RaftTransportClient<Channel>> {
    Ok(RaftTransportClient::connect(format!("http://{addr}")).await?)
}

/// A request carrying `token` as the peer secret (none when `None`).
fn request<T>(msg: T, token: Option<&str>) -> anyhow::Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut().insert(PEER_TOKEN_HEADER, t.parse()?);
    }
    Ok(req)
}

/// Node `id` still serves: a put through it succeeds and it was not removed.
async fn still_serves(cluster: &Cluster, id: u64) -> anyhow::Result<()> {
    let node = cluster.node(id)?;
    anyhow::ensure!(!node.is_removed(), "node {id} believes it was removed");
    let mut c = etcd(cluster, id).await?;
    c.put(format!("alive/{id}"), "yes", None).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_transport_is_not_served_on_the_client_port() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let victim = cluster.follower_of(leader);

    info!("--- step: NotifyRemoved and ReadIndex on the client port");
    let mut c = raft_client(cluster.addr(victim)).await?;
    let err = c
        .notify_removed(request(payload(&victim)?, None)?)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("NotifyRemoved on the client port was answered"))?;
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err}");
    let mut c = raft_client(cluster.addr(leader)).await?;
    let err = c
        .read_index(request(payload(&())?, None)?)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("ReadIndex on the client port was answered"))?;
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err}");
    still_serves(&cluster, victim).await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_peer_port_refuses_callers_without_the_token() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let victim = cluster.follower_of(leader);
    let token = std::fs::read_to_string(cluster.peer_token_file())?;
    let token = token.trim();

    info!("--- step: NotifyRemoved without a token and with a wrong one");
    let mut c = raft_client(cluster.peer_addr(victim)).await?;
    for presented in [None, Some("0123456789abcdef-not-the-token")] {
        let err = c
            .notify_removed(request(payload(&victim)?, presented)?)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("NotifyRemoved with token {presented:?} answered"))?;
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    }
    info!("--- step: ReadIndex and a snapshot install without a token");
    let mut c = raft_client(cluster.peer_addr(leader)).await?;
    let err = c
        .read_index(request(payload(&())?, None)?)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("ReadIndex without a token was answered"))?;
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let err = c
        .install_snapshot(request(RaftPayload { data: vec![0; 64] }, None)?)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("InstallSnapshot without a token was answered"))?;
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    still_serves(&cluster, victim).await?;

    info!("--- step: the same call with the cluster's token is served");
    let reply = c.read_index(request(payload(&())?, Some(token))?).await?;
    let index: Result<LogId, RaftPathError> = bincode::deserialize(&reply.get_ref().data)?;
    assert!(
        index.is_ok(),
        "the leader answers a peer's read index: {index:?}"
    );
    cluster.shutdown().await;
    Ok(())
}

/// Sends `cmds` over one ForwardStream to the leader's peer port (as a follower would, with
/// the token) and returns the answers by id.
async fn forward(
    cluster: &Cluster,
    leader: u64,
    cmds: Vec<Command>,
) -> anyhow::Result<Vec<(u64, Result<CommandResponse, RaftPathError>)>> {
    use futures::StreamExt;
    let token = std::fs::read_to_string(cluster.peer_token_file())?;
    let n = cmds.len();
    let msgs: Vec<RaftPayload> = cmds
        .into_iter()
        .enumerate()
        .map(|(i, c)| payload(&(i as u64, c)))
        .collect::<anyhow::Result<_>>()?;
    let mut c = raft_client(cluster.peer_addr(leader)).await?;
    let req = request(futures::stream::iter(msgs), Some(token.trim()))?;
    let mut answers = c.forward_stream(req).await?.into_inner();
    let mut out = Vec::new();
    while out.len() < n {
        let next = tokio::time::timeout(T, answers.next()).await?;
        let Some(item) = next else { break };
        out.push(bincode::deserialize(&item?.data)?);
    }
    out.sort_by_key(|(id, _)| *id);
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarded_commands_are_validated_on_the_leader() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let mut c = etcd(&cluster, leader).await?;
    let lease = c.lease_grant(60, None).await?.id();
    c.put(
        "leased",
        "v",
        Some(etcd_client::PutOptions::new().with_lease(lease)),
    )
    .await?;

    info!("--- step: a forwarded LeaseExpire and an oversized put");
    let big_key = vec![b'k'; 2 << 20];
    let answers = forward(
        &cluster,
        leader,
        vec![
            Command::LeaseExpire { ids: vec![lease] },
            Command::Put(PutRequest {
                key: big_key,
                value: b"v".to_vec(),
                ..Default::default()
            }),
            Command::Put(PutRequest {
                key: b"forwarded/ok".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            }),
        ],
    )
    .await?;
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert!(
        matches!(&answers[0].1, Err(RaftPathError::Invalid { reason }) if reason.contains("only by the leader")),
        "a forwarded LeaseExpire is refused: {:?}",
        answers[0].1
    );
    assert!(
        matches!(&answers[1].1, Err(RaftPathError::Invalid { reason }) if reason.contains("too large")),
        "an oversized forwarded put is refused: {:?}",
        answers[1].1
    );
    assert!(
        answers[2].1.is_ok(),
        "a valid forward is applied: {:?}",
        answers[2].1
    );

    info!("--- step: the lease and its key are still there");
    let ttl = c.lease_time_to_live(lease, None).await?;
    assert!(ttl.ttl() > 0, "lease {lease} survived: ttl {}", ttl.ttl());
    let got = c.get("leased", None).await?;
    assert_eq!(got.kvs().len(), 1, "the leased key survived");
    wait_until(T, "the valid forward on every node", || async {
        for id in cluster.running() {
            let mut c = etcd(&cluster, id).await.ok()?;
            let r = c.get("forwarded/ok", None).await.ok()?;
            r.kvs().first()?;
        }
        Some(())
    })
    .await?;
    cluster.shutdown().await;
    Ok(())
}
