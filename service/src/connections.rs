//! Accepting connections within bounds, so that idle or silent peers cannot use up the
//! server's file descriptors:
//!
//! - at most [`ConnectionLimits::max_connections`] are open at once; a connection over the
//!   limit is closed as soon as it is accepted, so the ones already served keep working;
//! - a connection must send its first bytes within [`ConnectionLimits::start_timeout`]
//!   (a peer that connects and says nothing — never starting HTTP/2 — is closed), and
//!   until it does it holds its place under the limit.
//!
//! Every accepted connection gets TCP keepalive (a peer that vanished without a word is
//! found) and no Nagle delay (streamed events are small writes that Nagle and delayed
//! ACKs would hold back by ~40 ms).

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// TCP keepalive, for connections whose peer vanished without a word.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Connections that have spoken, waiting for the server to take them.
const HANDOVER: usize = 256;

/// How many connections the server keeps, and how soon each must speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub start_timeout: Duration,
}

/// A connection that counts against the limit until it is dropped.
pub struct Counted {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The connections accepted on `listener` within `limits`, until `stop` is cancelled.
pub fn accept(
    listener: TcpListener,
    limits: ConnectionLimits,
    stop: CancellationToken,
) -> impl Stream<Item = io::Result<Counted>> {
    let (tx, rx) = mpsc::channel(HANDOVER);
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, or the peer gave up mid-handshake: wait a
                        // little rather than spin, then go on accepting.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => return,
            };
            let Ok(permit) = open.clone().try_acquire_owned() else {
                tracing::warn!(%peer, limit = limits.max_connections, "connection limit reached; closing a new connection");
                continue;
            };
            if let Err(e) = configure(&stream) {
                tracing::debug!(%peer, error = %e, "cannot set socket options");
            }
            let tx = tx.clone();
            tokio::spawn(async move {
                // Wait for the first bytes without reading them (the server reads them).
                let mut first = [0u8; 1];
                match tokio::time::timeout(limits.start_timeout, stream.peek(&mut first)).await {
                    Ok(Ok(n)) if n > 0 => {
                        let _ = tx.send(Ok(Counted { stream, _permit: permit })).await;
                    }
                    Ok(_) => {} // closed before speaking
                    Err(_) => tracing::debug!(%peer, "closing a connection that sent nothing"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

fn configure(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    socket2::SockRef::from(stream).set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE))
}
