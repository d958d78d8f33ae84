//! Free slots of the workers connected to this replica, as a submit sees them.
//!
//! A job that would find a free slot once every job ahead of it in line has one, on a
//! worker connected here, need not wait in line at all: the submit holds that slot and writes the job
//! started, in its own transaction, instead of queueing it for the dispatcher to claim
//! (a second commit, after a hop through the store's watch and a dispatch round). The
//! dispatcher owns the slots ([`crate::dispatch`]); this trait is what the lifecycle
//! needs of it, so that `jobs` does not depend on the dispatcher that depends on it.

use super::{Claimed, WorkerRecord};

/// Where a submit finds a free slot to start its job in.
pub trait FreeSlots: Send + Sync {
    /// Holds a free slot of a connected worker that serves `served_model`, if the workers
    /// serving it have more free slots than the `waiting` jobs in its line (which the
    /// dispatcher is about to claim: the new job overtakes none of them).
    fn hold(&self, served_model: &str, waiting: usize) -> Option<Box<dyn HeldSlot>>;
}

/// A worker's slot held for one job. Dropped unused, it is free again.
pub trait HeldSlot: Send {
    fn worker(&self) -> &WorkerRecord;
    /// The lease of the worker's session: the job's claim is held under it, so that it
    /// vanishes with the session, as a dispatched job's does.
    fn lease(&self) -> i64;
    /// Gives the worker the job started in this slot. A session that cannot take it is
    /// dropped (its lease, and with it the claim, ends; the job goes back in line).
    fn hand_over(self: Box<Self>, claimed: Claimed);
    /// Ends the worker's session, `why`: whether a job started in this slot is unknown,
    /// and its claim must go with the session's lease.
    fn drop_worker(self: Box<Self>, why: &str);
}
