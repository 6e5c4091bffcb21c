//! Accepted client/peer connections that a node can cut when it stops.
//!
//! Stopping a tonic server only stops accepting; connections already open (watch streams,
//! keep-alive streams) would keep running and keep the node's storage open. Every accepted
//! socket is wrapped in [`CuttableStream`], which reports end-of-stream to its reader and
//! fails its writer once the node's stop token is cancelled — like a crash, every connection
//! drops at once.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use rustls::ServerConfig;

use crate::tls::Reloadable;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// A TCP connection that ends when `stop` is cancelled.
pub struct CuttableStream {
    inner: TcpStream,
    stopped: Pin<Box<WaitForCancellationFutureOwned>>,
    cut: bool,
}

impl CuttableStream {
    fn new(inner: TcpStream, stop: &CancellationToken) -> Self {
        CuttableStream {
            inner,
            stopped: Box::pin(stop.clone().cancelled_owned()),
            cut: false,
        }
    }

    /// Polls the stop token (registering the waker), so a blocked read wakes up on stop.
    fn is_cut(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.cut && self.stopped.as_mut().poll(cx).is_ready() {
            self.cut = true;
        }
        self.cut
    }
}

fn aborted() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "node stopped")
}

use std::future::Future;

impl AsyncRead for CuttableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CuttableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for CuttableStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

/// An accepted connection, plaintext or TLS.
pub enum ServerIo {
    Plain(CuttableStream),
    Tls(Box<tokio_rustls::server::TlsStream<CuttableStream>>),
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Connected for ServerIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match self {
            ServerIo::Plain(s) => s.connect_info(),
            ServerIo::Tls(s) => s.get_ref().0.connect_info(),
        }
    }
}

/// The longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections (TCP_NODELAY on: small replies must not wait for delayed ACKs) until
/// `stop` is cancelled. With `tls`, each connection's handshake runs in its own task (a slow or
/// silent client holds up no other), with the config current when it was accepted; a failed
/// handshake (a plaintext client, an untrusted certificate) drops that connection only.
pub fn incoming(
    listener: TcpListener,
    stop: CancellationToken,
    tls: Option<Arc<Reloadable<ServerConfig>>>,
    port: &'static str,
) -> Pin<Box<dyn Stream<Item = io::Result<ServerIo>> + Send>> {
    let accepted =
        futures::stream::unfold((listener, stop.clone()), |(listener, stop)| async move {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return None,
                r = listener.accept() => r,
            };
            let item = accepted.map(|(s, _)| {
                let _ = s.set_nodelay(true);
                CuttableStream::new(s, &stop)
            });
            Some((item, (listener, stop)))
        });
    let Some(tls) = tls else {
        return Box::pin(accepted.map(|r| r.map(ServerIo::Plain)));
    };
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut accepted = std::pin::pin!(accepted);
        while let Some(item) = accepted.next().await {
            let stream = match item {
                Ok(s) => s,
                Err(e) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            tokio::spawn(async move {
                let remote = stream.inner.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send(Ok(ServerIo::Tls(Box::new(s)))).await;
                    }
                    Ok(Err(e)) => tracing::info!(port, ?remote, "TLS handshake failed: {e}"),
                    Err(_) => tracing::info!(port, ?remote, "TLS handshake timed out"),
                }
            });
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
