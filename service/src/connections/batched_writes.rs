//! One write for many frames: a connection waits one turn of the scheduler before it
//! writes, so that the frames of every stream woken by the same event go out together.
//!
//! Ten thousand `WatchJob` streams on one job, spread over twenty HTTP/2 connections,
//! each got every event in a write of its own (about one `writev` per delivered event,
//! 40% of the service's CPU in the kernel). The cause is tokio's scheduling: each
//! stream's task is woken by the event and pushes its frame into its connection, which
//! wakes the connection's task; tokio runs a task that the running one woke next (its
//! "LIFO slot"), so the connection wrote and flushed after every single stream, before
//! the next stream task had run.
//!
//! Here the first write after a flush does not happen at once: the connection's task
//! wakes itself and returns `Pending`, which puts it at the back of its worker's run
//! queue, behind the stream tasks woken with it. When it runs again their frames are
//! waiting too, and HTTP/2 writes them all in one buffer. Nothing is buffered here (the
//! bytes stay in the HTTP/2 codec's own buffer), and a lone response waits only for the
//! tasks already queued: a few microseconds on an idle server.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose writes wait one scheduler turn after each flush.
pub struct BatchedWrites<S> {
    inner: S,
    /// Whether this round of writes has already waited its turn. Reset by a flush.
    waited: bool,
}

impl<S> BatchedWrites<S> {
    pub fn new(inner: S) -> Self {
        BatchedWrites { inner, waited: false }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// `Pending` (having woken the task, so that it runs again after the tasks already
    /// queued) the first time in a round of writes; `Ready` after that.
    fn wait_turn(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.waited {
            return Poll::Ready(());
        }
        self.waited = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for BatchedWrites<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for BatchedWrites<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        std::task::ready!(self.wait_turn(cx));
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.wait_turn(cx));
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = std::task::ready!(Pin::new(&mut self.inner).poll_flush(cx));
        self.waited = false;
        Poll::Ready(flushed)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// The first write of a round returns `Pending` once, with the task woken; the
    /// writes after it in the same round, and the first of the next round after a
    /// flush, behave as described.
    #[tokio::test]
    async fn the_first_write_after_a_flush_waits_one_turn() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut writes = BatchedWrites::new(client);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut writes).poll_write(&mut cx, b"a").is_pending(), "the first write waits");
        assert!(matches!(Pin::new(&mut writes).poll_write(&mut cx, b"a"), Poll::Ready(Ok(1))));
        assert!(matches!(Pin::new(&mut writes).poll_write(&mut cx, b"b"), Poll::Ready(Ok(1))), "no second wait");
        assert!(matches!(Pin::new(&mut writes).poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert!(Pin::new(&mut writes).poll_write(&mut cx, b"c").is_pending(), "a new round waits again");
        // Through the ordinary async API the wait is invisible.
        writes.write_all(b"c").await.unwrap();
        writes.flush().await.unwrap();
        let mut got = [0u8; 3];
        tokio::io::AsyncReadExt::read_exact(&mut server, &mut got).await.unwrap();
        assert_eq!(&got, b"abc");
    }
}
