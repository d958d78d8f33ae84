//! One runner per kind of job.

pub mod diagnostic;
