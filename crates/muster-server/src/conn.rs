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

use futures::Stream;
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

/// Accepts connections (TCP_NODELAY on: small replies must not wait for delayed ACKs) until
/// `stop` is cancelled.
pub fn incoming(
    listener: TcpListener,
    stop: CancellationToken,
) -> impl Stream<Item = io::Result<CuttableStream>> {
    futures::stream::unfold((listener, stop), |(listener, stop)| async move {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return None,
            r = listener.accept() => r,
        };
        let item = accepted.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            CuttableStream::new(s, &stop)
        });
        Some((item, (listener, stop)))
    })
}
