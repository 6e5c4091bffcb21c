//! Starts a node: binds the gRPC port (clients and peers share it), opens the node, serves
//! every service, and the HTTP port for /health, /ready and /metrics.

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
use muster_proto::registrypb::registry_server::RegistryServer;

/// How long a stopping server may take to wind down its connections before it is aborted.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// A node serving on its ports. Dropping it does not stop it; call [`RunningServer::stop`].
pub struct RunningServer {
    pub node: Arc<Node>,
    /// The bound gRPC address.
    pub addr: SocketAddr,
    /// The bound HTTP address, when enabled.
    pub http_addr: Option<SocketAddr>,
    /// The node's lease keeper (leader-side lease time); for services that grant leases.
    pub leases: Arc<LeaseKeeper>,
    /// Cancelled to stop: ends the accept loop and cuts every open connection.
    stop: CancellationToken,
    grpc_task: JoinHandle<()>,
    http_task: Option<JoinHandle<()>>,
}

/// Binds, opens storage, starts Raft and serves. Returns once the ports are bound.
pub async fn start(config: NodeConfig) -> Result<RunningServer, StartError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(StartError::Storage)?;
    start_with_listener(config, listener).await
}

/// Like [`start`], on an already bound gRPC listener (tests bind port 0 first to learn every
/// node's address before any node starts).
pub async fn start_with_listener(
    config: NodeConfig,
    listener: TcpListener,
) -> Result<RunningServer, StartError> {
    let addr = listener.local_addr().map_err(StartError::Storage)?;
    let http_listener = match config.http_listen {
        Some(a) => Some(TcpListener::bind(a).await.map_err(StartError::Storage)?),
        None => None,
    };
    let advertise = config.advertise.clone().unwrap_or_else(|| addr.to_string());
    let max_msg = config.limits.max_request_bytes * 2 + (1 << 20);
    let node = Node::open(config, advertise).await?;
    tracing::info!(node_id = node.id, %addr, advertise = %node.advertise, "serving gRPC");
    let leases = LeaseKeeper::start(node.clone());

    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(
            KvServer::new(KvService { node: node.clone() })
                .max_decoding_message_size(max_msg)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(MaintenanceServer::new(MaintenanceService {
            node: node.clone(),
        }))
        .add_service(ClusterServer::new(ClusterService { node: node.clone() }))
        .add_service(RegistryServer::new(RegistryService {
            node: node.clone(),
            leases: leases.clone(),
        }))
        .add_service(LeaseServer::new(LeaseService {
            node: node.clone(),
            keeper: leases.clone(),
        }))
        .add_service(
            WatchServer::new(WatchService { node: node.clone() })
                .max_decoding_message_size(max_msg)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            RaftTransportServer::new(RaftService {
                node: node.clone(),
                leases: leases.clone(),
            })
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX),
        );
    let stop = CancellationToken::new();
    // A removed member stops serving, as an etcd member does.
    let removed_watch = node.clone();
    let stop_on_removal = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = removed_watch.wait_removed() => stop_on_removal.cancel(),
            _ = stop_on_removal.cancelled() => {}
        }
    });
    let grpc_stop = stop.clone();
    let grpc_task = tokio::spawn(async move {
        let incoming = crate::conn::incoming(listener, grpc_stop.clone());
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, grpc_stop.cancelled())
            .await
        {
            tracing::error!("gRPC server failed: {e}");
        }
    });

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
        http_addr,
        leases,
        stop,
        grpc_task,
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
        if tokio::time::timeout(STOP_GRACE, &mut self.grpc_task)
            .await
            .is_err()
        {
            self.grpc_task.abort();
            let _ = (&mut self.grpc_task).await;
        }
        if let Some(t) = self.http_task.take() {
            t.abort();
            let _ = t.await;
        }
        self.leases.stop();
        self.node.shutdown().await;
    }

    /// Waits until the gRPC server ends (it ends only through [`RunningServer::stop`] or failure).
    pub async fn wait(&mut self) {
        let _ = (&mut self.grpc_task).await;
    }
}
