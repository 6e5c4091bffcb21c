//! The client side of TLS to a peer: a tonic connector that opens TCP (with a timeout and
//! TCP_NODELAY, as tonic's own does) and runs the TLS handshake with the peer client config
//! current at that moment, verifying the peer's certificate for the host it was dialled by.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::tls::Reloadable;

/// Connects peer channels over TLS.
#[derive(Clone)]
pub struct TlsConnector {
    pub config: Arc<Reloadable<ClientConfig>>,
    pub connect_timeout: Duration,
}

impl tower_service::Service<tonic::transport::Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::transport::Uri) -> Self::Future {
        let config = self.config.current();
        let timeout = self.connect_timeout;
        Box::pin(async move {
            let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
            let host = uri
                .host()
                .ok_or_else(|| bad("peer address without a host"))?;
            let port = uri
                .port_u16()
                .ok_or_else(|| bad("peer address without a port"))?;
            // An IPv6 host comes bracketed in a URI.
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let name = ServerName::try_from(host.clone())
                .map_err(|e| bad(&format!("peer host {host:?}: {e}")))?;
            let tcp = tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port)))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            let _ = tcp.set_nodelay(true);
            let tls = tokio::time::timeout(
                timeout * 5,
                tokio_rustls::TlsConnector::from(config).connect(name, tcp),
            )
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
            Ok(TokioIo::new(tls))
        })
    }
}
