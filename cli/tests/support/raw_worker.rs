//! A worker speaking the worker protocol by hand, to do what a real worker never would:
//! stop reading, report nonsense, present another session's fence.

use std::time::Duration;

use deephardway::{
    v1::{JobEvent, JobKind, job_event::Event},
    worker::v1::{
        Assignment, ConnectRequest, ConnectResponse, Heartbeat, Hello, Report, ServedModel, connect_request,
        connect_response, worker_service_client::WorkerServiceClient,
    },
};
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// What it sends goes through `requests`; what the service sends arrives on `responses`,
/// if it is read at all. `service` is a client on the same connection, for
/// FetchArtifact and PublishModel.
pub struct RawWorker {
    pub requests: mpsc::Sender<ConnectRequest>,
    pub responses: tonic::Streaming<ConnectResponse>,
    pub service: WorkerServiceClient<Channel>,
}

/// A model of `kind` named `name`, as a hello announces it.
pub fn served(name: &str, kind: JobKind) -> ServedModel {
    ServedModel { name: name.into(), kind: kind as i32, ..Default::default() }
}

impl RawWorker {
    /// Connects announcing `model` (a diagnostic model) with `slots`. `window` is the
    /// HTTP/2 receive window the worker grants: 0 means nothing sent to it can arrive.
    pub async fn connect(url: &str, model: &str, slots: u32, window: Option<u32>) -> RawWorker {
        let channel = match window {
            None => deephardway::connect(url).await.expect("connect"),
            Some(window) => tonic::transport::Endpoint::from_shared(url.to_string())
                .unwrap()
                .initial_stream_window_size(window)
                .initial_connection_window_size(window.max(65_535))
                .connect()
                .await
                .expect("connect"),
        };
        Self::connect_on(channel, model, vec![served(model, JobKind::Diagnostic)], slots).await
    }

    /// Connects as `name`, announcing `models`.
    pub async fn serving(url: &str, name: &str, models: Vec<ServedModel>, slots: u32) -> RawWorker {
        Self::connect_on(deephardway::connect(url).await.expect("connect"), name, models, slots).await
    }

    async fn connect_on(channel: Channel, name: &str, models: Vec<ServedModel>, slots: u32) -> RawWorker {
        let (requests, rx) = mpsc::channel(64);
        let hello = Hello { name: name.into(), device: "cpu".into(), models, slots, version: "test".into() };
        requests.send(ConnectRequest { message: Some(connect_request::Message::Hello(hello)) }).await.unwrap();
        let service = WorkerServiceClient::new(channel).max_decoding_message_size(usize::MAX);
        let responses = service.clone().connect(receiver_stream(rx)).await.expect("Connect").into_inner();
        RawWorker { requests, responses, service }
    }

    /// Sends heartbeats every `every` until the stream ends, as a live worker does.
    pub fn keep_beating(&self, every: Duration) {
        let requests = self.requests.clone();
        tokio::spawn(async move {
            let beat = || ConnectRequest { message: Some(connect_request::Message::Heartbeat(Heartbeat::default())) };
            while requests.send(beat()).await.is_ok() {
                tokio::time::sleep(every).await;
            }
        });
    }

    pub async fn report(&self, job_id: &str, fence: u64, event: Event) {
        let event = JobEvent { job_id: job_id.into(), event: Some(event), ..Default::default() };
        let report = Report { job_id: job_id.into(), fence, event: Some(event) };
        self.requests.send(ConnectRequest { message: Some(connect_request::Message::Report(report)) }).await.unwrap();
    }

    /// The next message other than the welcome, within 10 s.
    pub async fn next(&mut self) -> connect_response::Message {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.responses.message())
                .await
                .expect("a message within 10 s")
                .expect("the stream holds")
                .expect("the stream is open");
            match message.message {
                Some(connect_response::Message::Welcome(_)) | None => continue,
                Some(other) => return other,
            }
        }
    }

    /// The next assignment, skipping the welcome.
    pub async fn assignment(&mut self) -> Assignment {
        match self.next().await {
            connect_response::Message::Assignment(assignment) => assignment,
            other => panic!("expected an assignment, got {other:?}"),
        }
    }
}

fn receiver_stream<T: Send + 'static>(rx: mpsc::Receiver<T>) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}
