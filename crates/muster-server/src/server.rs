//! Starts a node: binds its ports — client gRPC (the etcd API and Muster's services), peer
//! gRPC (`RaftTransport` only, behind the peer token) and HTTP (/health, /ready, /metrics) —
//! opens the node and serves.

use std::net::SocketAddr;
use std::sync::Arc;

use muster_proto::etcdserverpb::cluster_server::ClusterServer;
use muster_proto::etcdserverpb::kv_server::KvServer;
use muster_proto::etcdserverpb::lease_server::LeaseServer;
use muster_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use muster_proto::etcdserverpb::watch_server::WatchServer;
use muster_proto::raftpb::raft_transport_server::RaftTransportServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::codegen::{http as h, Service};
use tonic::service::interceptor::InterceptedService;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

use crate::admission::AdmissionLayer;
use crate::config::NodeConfig;
use crate::grpc::cluster_service::ClusterService;
use crate::grpc::kv_service::KvService;
use crate::grpc::lease_service::LeaseService;
use crate::grpc::maintenance_service::MaintenanceService;
use crate::grpc::raft_service::RaftService;
use crate::grpc::registry_service::RegistryService;
use crate::grpc::watch_service::WatchService;
use crate::http;
use crate::lease_keeper::LeaseKeeper;
use crate::node::{Node, StartError};
use crate::peer_auth::CheckToken;
use crate::services::Services;
use muster_proto::registrypb::registry_server::RegistryServer;

/// How long a stopping server may take to wind down its connections before it is aborted.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Largest message a client call may send: a request up to `max_request_bytes` with room for
/// its framing, as etcd (request limit + 512 KiB). Past it the call fails in gRPC itself
/// (ResourceExhausted), as etcd's does; under it, a request over the limit is refused with
/// "etcdserver: request is too large".
pub fn client_message_limit(config: &NodeConfig) -> usize {
    config.limits.max_request_bytes + (512 << 10)
}

/// Most log entries in one append request (openraft's `max_payload_entries` default).
const APPEND_MAX_ENTRIES: usize = 300;

/// Largest snapshot message: a snapshot travels whole in one `InstallSnapshot` message, so
/// this bounds the state a follower can be sent (until snapshots are chunked).
const SNAPSHOT_MESSAGE_LIMIT: usize = 4 << 30;

/// Largest message on the peer port: an append request (at most [`APPEND_MAX_ENTRIES`]
/// entries, each bounded by the client message limit, since a proposal batch stops at about
/// one request's size past 1 MiB) or a whole snapshot. Only authenticated peers get this far:
/// the token is checked before a request's body is read.
pub fn peer_message_limit(config: &NodeConfig) -> usize {
    let per_entry = client_message_limit(config) + (1 << 20);
    (APPEND_MAX_ENTRIES * per_entry).max(SNAPSHOT_MESSAGE_LIMIT)
}

/// A node's two bound gRPC listeners.
pub struct Listeners {
    /// Clients: the etcd API and Muster's services.
    pub client: TcpListener,
    /// Peers: `RaftTransport` only, behind the peer token.
    pub peer: TcpListener,
}

impl Listeners {
    /// Binds both listen addresses of `config`.
    pub async fn bind(config: &NodeConfig) -> std::io::Result<Listeners> {
        Ok(Listeners {
            client: TcpListener::bind(config.listen).await?,
            peer: TcpListener::bind(config.peer_listen).await?,
        })
    }
}

/// A node serving on its ports. Dropping it does not stop it; call [`RunningServer::stop`].
pub struct RunningServer {
    pub node: Arc<Node>,
    /// The bound client gRPC address.
    pub addr: SocketAddr,
    /// The bound peer gRPC address.
    pub peer_addr: SocketAddr,
    /// The bound HTTP address, when enabled.
    pub http_addr: Option<SocketAddr>,
    /// The node's lease keeper (leader-side lease time); for services that grant leases.
    pub leases: Arc<LeaseKeeper>,
    /// The service layer every front door calls.
    pub services: Services,
    /// Cancelled to stop: ends the accept loops and cuts every open connection.
    stop: CancellationToken,
    grpc_task: JoinHandle<()>,
    peer_task: JoinHandle<()>,
    http_task: Option<JoinHandle<()>>,
}

/// Binds, opens storage, starts Raft and serves. Returns once the ports are bound.
pub async fn start(config: NodeConfig) -> Result<RunningServer, StartError> {
    let listeners = Listeners::bind(&config)
        .await
        .map_err(StartError::Storage)?;
    start_with_listeners(config, listeners).await
}

/// Serves `router` (with the layers `L` around its services) on `listener` until `stop` is
/// cancelled.
fn serve<L>(
    router: tonic::transport::server::Router<L>,
    listener: TcpListener,
    stop: CancellationToken,
    tls: Option<Arc<crate::tls::Reloadable<rustls::ServerConfig>>>,
    port: &'static str,
) -> JoinHandle<()>
where
    L: tower_layer::Layer<tonic::service::Routes> + Send + 'static,
    L::Service: Service<h::Request<Body>, Response = h::Response<Body>> + Clone + Send + 'static,
    <L::Service as Service<h::Request<Body>>>::Future: Send,
    <L::Service as Service<h::Request<Body>>>::Error: Into<BoxError> + Send,
{
    tokio::spawn(async move {
        let incoming = crate::conn::incoming(listener, stop.clone(), tls, port);
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, stop.cancelled())
            .await
        {
            tracing::error!(port, "gRPC server failed: {e}");
        }
    })
}

/// Like [`start`], on already bound listeners (tests bind port 0 first to learn every node's
/// addresses before any node starts).
pub async fn start_with_listeners(
    config: NodeConfig,
    listeners: Listeners,
) -> Result<RunningServer, StartError> {
    let addr = listeners.client.local_addr().map_err(StartError::Storage)?;
    let peer_addr = listeners.peer.local_addr().map_err(StartError::Storage)?;
    let http_listener = match config.http_listen {
        Some(a) => Some(TcpListener::bind(a).await.map_err(StartError::Storage)?),
        None => None,
    };
    let advertise = config.advertise.clone().unwrap_or_else(|| addr.to_string());
    let peer_advertise = config
        .peer_advertise
        .clone()
        .unwrap_or_else(|| peer_addr.to_string());
    let max_msg = client_message_limit(&config);
    let max_peer_msg = peer_message_limit(&config);
    let node = Node::open(config, advertise, peer_advertise, max_peer_msg).await?;
    tracing::info!(node_id = node.id, %addr, %peer_addr, advertise = %node.advertise,
        peer_advertise = %node.peer_advertise, "serving gRPC");
    let leases = LeaseKeeper::start(node.clone());
    let services = Services::new(node.clone(), leases.clone());

    // The client port: client APIs only. RaftTransport is not served here, so a call to it
    // is Unimplemented. Calls past the global bound are refused at once (`admission.rs`);
    // tonic's per-connection bound makes one connection's excess wait for that connection.
    let bp = &node.config.backpressure;
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .concurrency_limit_per_connection(bp.max_concurrent_requests_per_connection)
        .layer(AdmissionLayer::new(node.client_permits.clone()))
        .add_service(
            KvServer::new(KvService {
                node: node.clone(),
                kv: services.kv.clone(),
            })
            .max_decoding_message_size(max_msg)
            .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            MaintenanceServer::new(MaintenanceService {
                node: node.clone(),
                maintenance: services.maintenance.clone(),
            })
            .max_decoding_message_size(max_msg),
        )
        .add_service(
            ClusterServer::new(ClusterService {
                node: node.clone(),
                cluster: services.cluster.clone(),
            })
            .max_decoding_message_size(max_msg),
        )
        .add_service(
            RegistryServer::new(RegistryService {
                node: node.clone(),
                registry: services.registry.clone(),
            })
            .max_decoding_message_size(max_msg)
            .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            LeaseServer::new(LeaseService {
                node: node.clone(),
                leases: services.lease.clone(),
            })
            .max_decoding_message_size(max_msg),
        )
        .add_service(
            WatchServer::new(WatchService { node: node.clone() })
                .max_decoding_message_size(max_msg)
                .max_encoding_message_size(usize::MAX),
        );
    // The peer port: RaftTransport only, every call checked for the peer token first.
    let raft_transport = RaftTransportServer::new(RaftService {
        node: node.clone(),
        leases: leases.clone(),
    })
    .max_decoding_message_size(max_peer_msg)
    .max_encoding_message_size(max_peer_msg);
    let peer_router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(InterceptedService::new(
            raft_transport,
            CheckToken((!node.config.tls.peer_mtls()).then(|| node.peers.token())),
        ));
    let stop = CancellationToken::new();
    crate::compactor::start(node.clone(), services.kv.clone(), stop.clone());
    crate::corruption::start(node.clone(), stop.clone());
    // A removed member stops serving, as an etcd member does.
    let removed_watch = node.clone();
    let stop_on_removal = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = removed_watch.wait_removed() => stop_on_removal.cancel(),
            _ = stop_on_removal.cancelled() => {}
        }
    });
    // Until it is recorded, this node's client address is not in the membership.
    let publisher = node.clone();
    let stop_publishing = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = publisher.publish_client_addr() => {}
            _ = stop_publishing.cancelled() => {}
        }
    });
    node.tls
        .spawn_reloader(node.config.tls.reload_interval, stop.clone());
    let grpc_task = serve(
        router,
        listeners.client,
        stop.clone(),
        node.tls.client_server.clone(),
        "client",
    );
    let peer_task = serve(
        peer_router,
        listeners.peer,
        stop.clone(),
        node.tls.peer_server.clone(),
        "peer",
    );

    let (http_addr, http_task) = match http_listener {
        Some(l) => {
            let a = l.local_addr().map_err(StartError::Storage)?;
            (
                Some(a),
                Some(tokio::spawn(http::serve(l, node.clone(), leases.clone()))),
            )
        }
        None => (None, None),
    };
    Ok(RunningServer {
        node,
        addr,
        peer_addr,
        http_addr,
        leases,
        services,
        stop,
        grpc_task,
        peer_task,
        http_task,
    })
}

impl RunningServer {
    /// Stops serving and shuts Raft down. Storage is released once the node's last handle
    /// (this struct's included) is dropped.
    pub async fn stop(mut self) {
        // Cutting every connection (like a crash) ends open streams, which would otherwise
        // keep a graceful shutdown waiting and the node's storage open.
        self.stop.cancel();
        for task in [&mut self.grpc_task, &mut self.peer_task] {
            if tokio::time::timeout(STOP_GRACE, &mut *task).await.is_err() {
                task.abort();
                let _ = task.await;
            }
        }
        if let Some(t) = self.http_task.take() {
            t.abort();
            let _ = t.await;
        }
        self.leases.stop();
        self.node.shutdown().await;
    }

    /// Stops the way an operator's stop should: a leader first hands its leadership to the
    /// most up-to-date voter (etcd's MoveLeader, bounded by a few seconds), so stopping it
    /// costs no election timeout; then [`RunningServer::stop`].
    pub async fn stop_gracefully(self) {
        crate::services::maintenance::hand_off_leadership(
            &self.node,
            crate::services::maintenance::STOP_HANDOFF,
        )
        .await;
        self.stop().await;
    }

    /// Waits until the gRPC server ends (it ends only through [`RunningServer::stop`] or failure).
    pub async fn wait(&mut self) {
        let _ = (&mut self.grpc_task).await;
    }
}
