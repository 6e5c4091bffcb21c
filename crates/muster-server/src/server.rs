//! Starts a node: binds the gRPC port (clients and peers share it), opens the node, serves
//! every service, and the HTTP port for /health, /ready and /metrics.

use std::net::SocketAddr;
use std::sync::Arc;

use muster_proto::etcdserverpb::cluster_server::ClusterServer;
use muster_proto::etcdserverpb::kv_server::KvServer;
use muster_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use muster_proto::raftpb::raft_transport_server::RaftTransportServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::NodeConfig;
use crate::grpc::cluster_service::ClusterService;
use crate::grpc::kv_service::KvService;
use crate::grpc::maintenance_service::MaintenanceService;
use crate::grpc::raft_service::RaftService;
use crate::http;
use crate::node::{Node, StartError};

/// A node serving on its ports. Dropping it does not stop it; call [`RunningServer::stop`].
pub struct RunningServer {
    pub node: Arc<Node>,
    /// The bound gRPC address.
    pub addr: SocketAddr,
    /// The bound HTTP address, when enabled.
    pub http_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
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

    let (tx, rx) = oneshot::channel::<()>();
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
        .add_service(
            RaftTransportServer::new(RaftService { node: node.clone() })
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
        );
    let grpc_task = tokio::spawn(async move {
        // tonic's own `tcp_nodelay` applies only to listeners it binds itself; without
        // TCP_NODELAY small replies wait for delayed ACKs (~40 ms).
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            })
            .await
        {
            tracing::error!("gRPC server failed: {e}");
        }
    });

    let (http_addr, http_task) = match http_listener {
        Some(l) => {
            let a = l.local_addr().map_err(StartError::Storage)?;
            (Some(a), Some(tokio::spawn(http::serve(l, node.clone()))))
        }
        None => (None, None),
    };
    Ok(RunningServer {
        node,
        addr,
        http_addr,
        shutdown: Some(tx),
        grpc_task,
        http_task,
    })
}

impl RunningServer {
    /// Stops serving and shuts Raft down. Storage is released once the node's last handle
    /// (this struct's included) is dropped.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Open streams would keep a graceful shutdown waiting: cut them, like a crash would.
        self.grpc_task.abort();
        let _ = (&mut self.grpc_task).await;
        if let Some(t) = self.http_task.take() {
            t.abort();
            let _ = t.await;
        }
        self.node.shutdown().await;
    }

    /// Waits until the gRPC server ends (it ends only through [`RunningServer::stop`] or failure).
    pub async fn wait(&mut self) {
        let _ = (&mut self.grpc_task).await;
    }
}
