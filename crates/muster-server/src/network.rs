//! The Raft network, client side: one lazily connected tonic `Channel` per peer address (the
//! peers' peer ports), openraft RPCs sent as bincode payloads over `muster.raft.v1.RaftTransport`,
//! every call carrying the cluster's peer secret (`peer_auth.rs`).
//! The server side is `grpc/raft_service.rs`.
//!
//! Replication runs over `AppendStream`, one long-lived bidirectional gRPC stream per openraft
//! replication session: requests are pipelined (the next one goes out before the previous
//! answer) and each costs one DATA frame instead of a whole unary call (headers, trailers,
//! routing) on both ends. A request left unanswered for the RPC deadline, or an injected
//! partition, ends the stream with an error; openraft then opens a new one.
//!
//! [`PeerChannels`] is also the one fault point (tests): every path here and in
//! `forward_stream.rs` asks its [`Faults`] about each message.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};

use muster_proto::raftpb::raft_transport_client::RaftTransportClient;
use muster_proto::raftpb::RaftPayload;
use muster_store::raft::Member;
use muster_store::raft::{NodeId, Snapshot, SnapshotData, TypeConfig, Vote};
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{RaftNetworkFactory, RaftNetworkV2};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::tls::Reloadable;

use crate::faults::{Faults, Verdict};
use crate::peer_auth::{AttachToken, PeerToken};

/// A RaftTransport client whose every request carries the peer secret.
pub type PeerClient = RaftTransportClient<InterceptedService<Channel, AttachToken>>;

/// A transport failure talking to a peer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("invalid peer address {addr}: {reason}")]
    BadAddress { addr: String, reason: String },
    #[error("rpc to {addr} failed: {status}")]
    Rpc { addr: String, status: tonic::Status },
    #[error("{addr} is unreachable (injected fault)")]
    Blocked { addr: String },
    #[error("message to {addr} dropped (injected fault)")]
    Dropped { addr: String },
    #[error("no answer from {addr} within {after:?}")]
    TimedOut { addr: String, after: Duration },
    #[error("payload codec: {0}")]
    Codec(#[from] bincode::Error),
}

impl PeerError {
    /// Whether the request certainly never reached the peer (no connection could be made), so
    /// retrying it elsewhere cannot apply it twice.
    pub fn was_not_sent(&self) -> bool {
        match self {
            PeerError::Blocked { .. }
            | PeerError::Dropped { .. }
            | PeerError::BadAddress { .. } => true,
            PeerError::Rpc { status, .. } => {
                status.code() == tonic::Code::Unavailable
                    && status.message().contains("connect error")
            }
            PeerError::Codec(_) | PeerError::TimedOut { .. } => false,
        }
    }
}

/// How long opening a connection to a peer may take.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// One cached channel per peer address, shared by Raft replication and request forwarding.
pub struct PeerChannels {
    channels: Mutex<HashMap<String, Channel>>,
    token: Arc<PeerToken>,
    /// Largest message a peer call may send or receive (see [`crate::server::peer_message_limit`]).
    max_message_bytes: usize,
    /// Fault injection for tests (a partition is a pair of blocks). The one place faults are
    /// injected, so every node-to-node path (replication, votes, snapshots, forwarding, read
    /// index) sees them.
    faults: Faults,
    /// Peer TLS (this node's certificate and the peers' CA), when the peer port speaks it.
    tls: Option<Arc<Reloadable<rustls::ClientConfig>>>,
}

impl PeerChannels {
    /// Channels that present `token`, carry messages up to `max_message_bytes`, and speak TLS
    /// with `tls` when given.
    pub fn new(
        token: PeerToken,
        max_message_bytes: usize,
        tls: Option<Arc<Reloadable<rustls::ClientConfig>>>,
    ) -> PeerChannels {
        PeerChannels {
            channels: Mutex::default(),
            token: Arc::new(token),
            max_message_bytes,
            faults: Faults::default(),
            tls,
        }
    }

    /// The secret this node presents to, and expects from, its peers.
    pub(crate) fn token(&self) -> Arc<PeerToken> {
        self.token.clone()
    }

    /// Makes `addr` unreachable from this node: calls fail at once (fault injection).
    pub fn block(&self, addr: &str) {
        self.faults.block(addr);
    }

    /// This node's calls to `addr` are accepted and never answered (fault injection).
    pub fn black_hole(&self, addr: &str) {
        self.faults.black_hole(addr);
    }

    /// This node's messages to `addr` are held `delay` before they leave (fault injection).
    pub fn delay(&self, addr: &str, delay: Duration) {
        self.faults.delay(addr, delay);
    }

    /// This node's messages to `addr` are lost with probability `p` (fault injection).
    pub fn drop_messages(&self, addr: &str, p: f64) {
        self.faults.drop_messages(addr, p);
    }

    /// Seeds the RNG that decides drops.
    pub fn seed_faults(&self, seed: u64) {
        self.faults.seed(seed);
    }

    /// Removes every injected fault.
    pub fn heal(&self) {
        self.faults.heal();
    }

    pub(crate) fn is_blocked(&self, addr: &str) -> bool {
        self.faults.is_blocked(addr)
    }

    pub(crate) fn is_black_holed(&self, addr: &str) -> bool {
        self.faults.is_black_holed(addr)
    }

    /// The injected fate of one message to `addr`.
    pub(crate) fn verdict(&self, addr: &str) -> Verdict {
        self.faults.verdict(addr)
    }

    /// The channel to `addr`, created (lazily connecting) on first use.
    pub fn get(&self, addr: &str) -> Result<Channel, PeerError> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = map.get(addr) {
            return Ok(ch.clone());
        }
        // http:// even with TLS: our connector runs the handshake itself, and tonic (with its
        // own TLS compiled in, for muster-client) refuses an https:// URI it has no TLS
        // config for, custom connector or not.
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| PeerError::BadAddress {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?
            .connect_timeout(PEER_CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let ch = match &self.tls {
            None => endpoint.connect_lazy(),
            Some(tls) => endpoint.connect_with_connector_lazy(crate::tls_connect::TlsConnector {
                config: tls.clone(),
                connect_timeout: PEER_CONNECT_TIMEOUT,
            }),
        };
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    pub fn client(&self, addr: &str) -> Result<PeerClient, PeerError> {
        let auth = AttachToken(self.token.clone());
        Ok(RaftTransportClient::with_interceptor(self.get(addr)?, auth)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<RaftPayload, bincode::Error> {
    Ok(RaftPayload {
        data: bincode::serialize(v)?,
    })
}

pub(crate) fn decode<T: DeserializeOwned>(p: &RaftPayload) -> Result<T, bincode::Error> {
    bincode::deserialize(&p.data)
}

/// Calls one unary RaftTransport rpc with a deadline, returning the decoded reply. Injected
/// faults apply first (a black-holed call waits out its whole deadline).
pub(crate) async fn call<Req, Resp, F, Fut>(
    peers: &PeerChannels,
    addr: &str,
    timeout: Duration,
    req: &Req,
    f: F,
) -> Result<Resp, PeerError>
where
    Req: Serialize,
    Resp: DeserializeOwned,
    F: FnOnce(PeerClient, tonic::Request<RaftPayload>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
{
    let timed_out = || PeerError::TimedOut {
        addr: addr.to_string(),
        after: timeout,
    };
    let delay = match peers.verdict(addr) {
        Verdict::Pass { delay } => delay,
        Verdict::Blocked => {
            return Err(PeerError::Blocked {
                addr: addr.to_string(),
            })
        }
        Verdict::Dropped => {
            return Err(PeerError::Dropped {
                addr: addr.to_string(),
            })
        }
        Verdict::BlackHole => {
            tokio::time::sleep(timeout).await;
            return Err(timed_out());
        }
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay.min(timeout)).await;
    }
    let Some(left) = timeout.checked_sub(delay).filter(|l| !l.is_zero()) else {
        return Err(timed_out());
    };
    let client = peers.client(addr)?;
    let mut request = tonic::Request::new(encode(req)?);
    request.set_timeout(left);
    let reply = f(client, request).await.map_err(|status| PeerError::Rpc {
        addr: addr.to_string(),
        status,
    })?;
    Ok(decode(reply.get_ref())?)
}

/// Creates per-peer connections for openraft.
#[derive(Clone)]
pub struct NetworkFactory {
    pub peers: Arc<PeerChannels>,
    /// The shortest deadline an append-entries RPC gets (see `append_entries`).
    pub append_timeout_floor: Duration,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerConnection {
        tracing::debug!(target_node = target, addr = %node.addr, "new raft peer connection");
        PeerConnection {
            addr: node.addr.clone(),
            peers: self.peers.clone(),
            append_timeout_floor: self.append_timeout_floor,
        }
    }
}

/// openraft's view of one peer.
pub struct PeerConnection {
    addr: String,
    peers: Arc<PeerChannels>,
    append_timeout_floor: Duration,
}

fn to_rpc_error<E: std::error::Error>(e: PeerError) -> RPCError<TypeConfig, E> {
    match &e {
        // Connection refused / no route: back off before retrying.
        PeerError::Rpc { status, .. } if status.code() == tonic::Code::Unavailable => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        PeerError::Blocked { .. } | PeerError::Dropped { .. } => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        _ => RPCError::Network(NetworkError::new(&e)),
    }
}

/// A remote openraft error (the peer's Raft stopped) travels back as text.
#[derive(Debug, thiserror::Error, Serialize, serde::Deserialize)]
#[error("remote raft error: {reason}")]
pub struct RemoteRaftError {
    pub reason: String,
}

impl PeerConnection {
    async fn unary<Req, Resp, F, Fut>(
        &self,
        timeout: Duration,
        req: &Req,
        f: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(PeerClient, tonic::Request<RaftPayload>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let r: Result<Resp, RemoteRaftError> = call(&self.peers, &self.addr, timeout, req, f)
            .await
            .map_err(to_rpc_error)?;
        r.map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

/// Send times of the requests of one `AppendStream` still waiting for their answer, oldest
/// first (answers come in request order).
type Outstanding = Arc<Mutex<VecDeque<Instant>>>;

/// Requests of one `AppendStream` that may await their answers at once. A small window keeps
/// the batching that waiting gives: entries proposed while a request is out travel together
/// in the next one (measured: fully pipelined streams sent one small request per entry and
/// cost followers more CPU per put at 64 clients than unary calls did).
pub const APPEND_WINDOW: usize = 1;

fn lock_outstanding(o: &Outstanding) -> std::sync::MutexGuard<'_, VecDeque<Instant>> {
    o.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the reply stream of one `AppendStream` carries between items.
struct ReplyState {
    replies: tonic::Streaming<RaftPayload>,
    outstanding: Outstanding,
    window: Arc<tokio::sync::Semaphore>,
    peers: Arc<PeerChannels>,
    addr: String,
    timeout: Duration,
    tick: tokio::time::Interval,
    /// An error was yielded: the stream ends.
    done: bool,
}

/// Answers of one `AppendStream`, decoded; ends with an error when the oldest request has
/// waited longer than `timeout` or the peer has been cut off by fault injection.
fn append_replies(
    state: ReplyState,
) -> impl Stream<Item = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>> {
    futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let out = loop {
            tokio::select! {
                item = st.replies.next() => match item {
                    None => return None,
                    Some(Err(status)) => {
                        let addr = st.addr.clone();
                        break Err(to_rpc_error(PeerError::Rpc { addr, status }));
                    }
                    // A black hole swallows answers too.
                    Some(Ok(_)) if st.peers.is_black_holed(&st.addr) => continue,
                    Some(Ok(payload)) => {
                        lock_outstanding(&st.outstanding).pop_front();
                        st.window.add_permits(1);
                        break decode::<StreamAppendResult<TypeConfig>>(&payload)
                            .map_err(|e| to_rpc_error(PeerError::Codec(e)));
                    }
                },
                _ = st.tick.tick() => {
                    if st.peers.is_blocked(&st.addr) {
                        break Err(to_rpc_error(PeerError::Blocked { addr: st.addr.clone() }));
                    }
                    let oldest = lock_outstanding(&st.outstanding).front().copied();
                    if oldest.is_some_and(|t| t.elapsed() > st.timeout) {
                        let status = tonic::Status::deadline_exceeded(format!(
                            "no append reply within {:?}",
                            st.timeout
                        ));
                        let addr = st.addr.clone();
                        break Err(to_rpc_error(PeerError::Rpc { addr, status }));
                    }
                }
            }
        };
        st.done = out.is_err();
        Some((out, st))
    })
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = SnapshotData;

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        // Same deadline rule as `append_entries`, applied to each request's answer.
        let timeout = option.soft_ttl().max(self.append_timeout_floor);
        let peers = self.peers.clone();
        let addr = self.addr.clone();
        Box::pin(async move {
            let mut client = peers.client(&addr).map_err(to_rpc_error)?;
            let outstanding: Outstanding = Arc::default();
            let sent = outstanding.clone();
            // At most APPEND_WINDOW requests out: the next is taken from openraft only once
            // an answer frees a slot.
            let window = Arc::new(tokio::sync::Semaphore::new(APPEND_WINDOW));
            let gate = window.clone();
            let gated = futures::stream::unfold((input, gate), |(mut input, gate)| async move {
                gate.acquire().await.ok()?.forget();
                let req = input.next().await?;
                Some((req, (input, gate)))
            });
            // Each request meets the injected faults (a delay is served here) and is encoded.
            let judge_peers = peers.clone();
            let judge_addr = addr.clone();
            let judged = gated.then(move |req| {
                let verdict = judge_peers.verdict(&judge_addr);
                async move {
                    if let Verdict::Pass { delay } = verdict {
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                    }
                    (verdict, encode(&req))
                }
            });
            // An encoding failure or an injected block or drop ends the requests; openraft then
            // gets the answers to what was sent and opens a new stream.
            let cut: Arc<Mutex<Option<Verdict>>> = Arc::default();
            let cut_by = cut.clone();
            let mut judged = Box::pin(
                judged
                    .take_while(move |(verdict, r)| {
                        let ended = matches!(verdict, Verdict::Blocked | Verdict::Dropped);
                        if ended {
                            *cut_by.lock().unwrap_or_else(|p| p.into_inner()) = Some(*verdict);
                        }
                        std::future::ready(r.is_ok() && !ended)
                    })
                    .filter_map(|(verdict, r)| std::future::ready(r.ok().map(|p| (verdict, p)))),
            );
            // The stream is opened only once openraft hands over its first request: producing
            // it runs openraft's back-off, so an unreachable peer is retried at the back-off's
            // pace instead of in a tight loop of failing opens.
            let Some((verdict, first)) = judged.next().await else {
                let cut = *cut.lock().unwrap_or_else(|p| p.into_inner());
                return match cut {
                    Some(Verdict::Blocked) => Err(to_rpc_error(PeerError::Blocked { addr })),
                    Some(Verdict::Dropped) => Err(to_rpc_error(PeerError::Dropped { addr })),
                    _ => Ok(Box::pin(futures::stream::empty()) as BoxStream<'s, _>),
                };
            };
            if verdict == Verdict::BlackHole {
                // A black-holed peer never answers the open either.
                tokio::time::sleep(timeout).await;
                let status = tonic::Status::deadline_exceeded("opening the append stream");
                return Err(to_rpc_error(PeerError::Rpc { addr, status }));
            }
            lock_outstanding(&sent).push_back(Instant::now());
            // A black-holed request counts as sent and is never answered: the reply deadline
            // ends the stream.
            let rest = judged.filter_map(move |(verdict, p)| {
                lock_outstanding(&sent).push_back(Instant::now());
                std::future::ready((verdict != Verdict::BlackHole).then_some(p))
            });
            let requests = futures::stream::once(std::future::ready(first)).chain(rest);
            let opened = tokio::time::timeout(timeout, client.append_stream(requests)).await;
            let replies = match opened {
                Ok(Ok(resp)) => resp.into_inner(),
                Ok(Err(status)) => return Err(to_rpc_error(PeerError::Rpc { addr, status })),
                Err(_) => {
                    let status = tonic::Status::deadline_exceeded("opening the append stream");
                    return Err(to_rpc_error(PeerError::Rpc { addr, status }));
                }
            };
            // Ticks check the reply deadline and injected partitions between replies.
            let mut tick = tokio::time::interval(timeout / 4);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let replies = append_replies(ReplyState {
                replies,
                outstanding,
                window,
                peers,
                addr,
                timeout,
                tick,
                done: false,
            });
            Ok(Box::pin(replies) as BoxStream<'s, _>)
        })
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // openraft's deadline for an append is the heartbeat interval; a large batch on a slow
        // disk can take longer, and retrying it on the same deadline never makes progress.
        let timeout = option.hard_ttl().max(self.append_timeout_floor);
        self.unary(timeout, &rpc, |mut c, r| async move {
            c.append_entries(r).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(option.hard_ttl(), &(false, rpc), |mut c, r| async move {
            c.vote(r).await
        })
        .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(option.hard_ttl(), &req, |mut c, r| async move {
            c.transfer_leader(r).await
        })
        .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        // Same rpc as vote, flagged: a pre-vote changes no state on the receiver.
        self.unary(option.hard_ttl(), &(true, rpc), |mut c, r| async move {
            c.vote(r).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let req = (vote, snapshot.meta, snapshot.snapshot);
        let send = call::<_, Result<SnapshotResponse<TypeConfig>, RemoteRaftError>, _, _>(
            &self.peers,
            &self.addr,
            option.hard_ttl(),
            &req,
            |mut c, r| async move { c.install_snapshot(r).await },
        );
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = send => match r {
                Ok(Ok(resp)) => Ok(resp),
                Ok(Err(remote)) => Err(StreamingError::Network(NetworkError::new(&remote))),
                Err(e) => Err(StreamingError::Unreachable(Unreachable::new(&e))),
            },
        }
    }
}
