//! Accepting connections within bounds, so that idle or silent peers cannot use up the
//! server's file descriptors:
//!
//! - at most [`ConnectionLimits::max_connections`] are open at once; a connection over the
//!   limit is closed as soon as it is accepted, so the ones already served keep working;
//! - a connection must send its first bytes within [`ConnectionLimits::start_timeout`]
//!   (a peer that connects and says nothing — never starting HTTP/2 — is closed), and
//!   until it does it holds its place under the limit.
//!
//! With TLS ([`accept_tls`]), the handshake happens here, before the server sees the
//! connection, and must be done within the same start timeout; a failed handshake (no
//! client certificate where one is required, a client that does not trust the
//! certificate, plain HTTP on a TLS port) closes the connection and is logged at debug.
//!
//! Every accepted connection gets TCP keepalive (a peer that vanished without a word is
//! found) and no Nagle delay (streamed events are small writes that Nagle and delayed
//! ACKs would hold back by ~40 ms), and its writes batched ([`batched_writes`]): the
//! frames of many streams woken by one event go out in one write.

mod batched_writes;

use std::{
    future::Future,
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
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use batched_writes::BatchedWrites;

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

/// A connection that counts against the limit until it is dropped: a [`TcpStream`], or
/// a [`TlsStream`] over one (whose connect info carries the client's certificates, for
/// `tonic::Request::peer_certs`).
pub struct Counted<S = TcpStream> {
    stream: BatchedWrites<S>,
    _permit: OwnedSemaphorePermit,
}

impl<S: Connected> Connected for Counted<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.get_ref().connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
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
    accept_with(listener, limits, stop, |stream: TcpStream| async move {
        // Wait for the first bytes without reading them (the server reads them).
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await? {
            0 => Err(io::ErrorKind::UnexpectedEof.into()), // closed before speaking
            _ => Ok(stream),
        }
    })
}

/// The connections accepted on `listener` within `limits`, each after a TLS handshake
/// done within the start timeout, until `stop` is cancelled.
pub fn accept_tls(
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: TlsAcceptor,
    stop: CancellationToken,
) -> impl Stream<Item = io::Result<Counted<TlsStream<TcpStream>>>> {
    accept_with(listener, limits, stop, move |stream: TcpStream| tls.accept(stream))
}

/// Accepts connections, and hands over those that `start` made ready within the start
/// timeout.
fn accept_with<S, F, Fut>(
    listener: TcpListener,
    limits: ConnectionLimits,
    stop: CancellationToken,
    start: F,
) -> impl Stream<Item = io::Result<Counted<S>>>
where
    S: Send + 'static,
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<S>> + Send + 'static,
{
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
            let started = start(stream);
            tokio::spawn(async move {
                match tokio::time::timeout(limits.start_timeout, started).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(Counted { stream: BatchedWrites::new(stream), _permit: permit })).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "closing a connection that did not start"),
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
