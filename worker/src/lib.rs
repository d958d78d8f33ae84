//! deephardway's worker: connects to a service replica, announces the models it serves
//! and its device, runs the jobs it is assigned and streams their events back.
//!
//! - [`connection`]: the session with the service: hello, assignments, cancellations,
//!   reports, and reconnecting with backoff when the stream breaks.
//! - [`runner`]: the [`Runner`] trait, one implementation per kind of job.
//! - [`runners`]: the implementations (diagnostic, embed, generate, train, classify),
//!   [`runners::open`], which picks one for a model on disk, and [`runners::vision`],
//!   the image classifiers that train and classify jobs build and use.
//! - [`artifacts`]: datasets and trained models fetched from the service, cached on disk.
//! - [`device`]: choosing a candle device (`auto`, `cpu`, `cuda[:N]`).

pub mod artifacts;
pub mod connection;
pub mod device;
pub mod runner;
pub mod runners;

pub use connection::{WorkerOptions, run};
pub use runner::{JobContext, JobError, Runner};
