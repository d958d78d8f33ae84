//! gRPC handlers, one file per service. They validate, translate and delegate: the
//! job state machine lives in [`crate::jobs`], the store watch in [`crate::hub`].

pub mod access;
pub mod datasets;
mod inline_stream;
pub mod jobs;
pub mod models;
mod page_token;
pub mod workers;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::{dispatch::Dispatcher, hub::Hub, jobs::JobLifecycle};

/// What every handler shares.
pub struct Context {
    pub lifecycle: JobLifecycle,
    pub hub: Hub,
    pub dispatcher: Dispatcher,
    /// The keys this replica accepts (auth on); KeyService refreshes it at once after a
    /// change, so that a key works (or stops working) here as soon as the call returns.
    pub keyring: Option<std::sync::Arc<crate::auth::KeyRing>>,
    /// Cancelled when the server shuts down; long streams end on it.
    pub shutdown: CancellationToken,
}

pub type SharedContext = Arc<Context>;
