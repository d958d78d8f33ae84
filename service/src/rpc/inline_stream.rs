//! Server streams driven in place: an async function sends a stream's items, and the
//! stream's consumer (the HTTP/2 response) polls that function itself, instead of a task
//! of its own sending through a channel. Per item that is one task wake-up and one channel
//! hand-off fewer; with ten thousand watchers of one job, each of its events was thirty
//! thousand wake-ups on the service's two threads, and is now twenty thousand.
//!
//! The function runs only while the consumer polls: a client that stops reading stops
//! it (its subscription's buffer fills, and the hub drops it, as before), and one that goes
//! away drops it, wherever it was waiting.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use futures::Stream;

/// Where the function puts the stream's next item.
type Slot<T> = Arc<Mutex<Option<T>>>;

/// The function's end of the stream.
pub struct Sender<T> {
    slot: Slot<T>,
}

impl<T> Sender<T> {
    /// Hands `item` to the consumer; returns once the consumer has taken it.
    pub async fn send(&self, item: T) {
        let mut item = Some(item);
        std::future::poll_fn(|_| {
            let mut slot = self.slot.lock().expect("inline stream slot");
            match item.take() {
                // No waker: the stream takes the item as soon as this poll returns, and
                // polls again when its consumer asks for the next one.
                Some(item) => {
                    *slot = Some(item);
                    Poll::Pending
                }
                None if slot.is_some() => Poll::Pending,
                None => Poll::Ready(()),
            }
        })
        .await
    }
}

/// A stream of what `body` sends, ending when `body` returns.
pub struct InlineStream<T> {
    body: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    slot: Slot<T>,
}

pub fn stream<T, F, B>(body: F) -> InlineStream<T>
where
    F: FnOnce(Sender<T>) -> B,
    B: Future<Output = ()> + Send + 'static,
{
    let slot: Slot<T> = Arc::new(Mutex::new(None));
    InlineStream { body: Some(Box::pin(body(Sender { slot: slot.clone() }))), slot }
}

impl<T> InlineStream<T> {
    fn take(&self) -> Option<T> {
        self.slot.lock().expect("inline stream slot").take()
    }
}

impl<T> Stream for InlineStream<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = self.get_mut();
        let Some(body) = this.body.as_mut() else { return Poll::Ready(None) };
        if body.as_mut().poll(cx).is_ready() {
            this.body = None;
        }
        match this.take() {
            Some(item) => Poll::Ready(Some(item)),
            None if this.body.is_none() => Poll::Ready(None),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn items_arrive_in_order_and_the_stream_ends_with_its_body() {
        let items: Vec<u32> = stream(|tx| async move {
            for i in 0..5 {
                tx.send(i).await;
                tokio::time::sleep(Duration::from_millis(1)).await;
                tx.send(i * 10).await;
            }
        })
        .collect()
        .await;
        assert_eq!(items, vec![0, 0, 1, 10, 2, 20, 3, 30, 4, 40]);
    }

    #[tokio::test]
    async fn the_body_runs_only_while_the_stream_is_read_and_is_dropped_with_it() {
        let (sent, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let mut items = stream(move |tx| async move {
            let _dropped = DropGuard(sent.clone());
            for i in 0..3u32 {
                let _ = sent.send(Some(i));
                tx.send(i).await;
            }
        });
        assert_eq!(items.next().await, Some(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The body waits in its second send until the item before is taken.
        assert_eq!(seen.try_recv().ok(), Some(Some(0)));
        assert!(seen.try_recv().is_err(), "the body ran ahead of its reader");
        drop(items);
        assert_eq!(seen.try_recv().ok(), Some(None), "dropping the stream drops its body");
    }

    struct DropGuard(tokio::sync::mpsc::UnboundedSender<Option<u32>>);

    impl Drop for DropGuard {
        fn drop(&mut self) {
            let _ = self.0.send(None);
        }
    }
}
