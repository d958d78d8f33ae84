//! Lease keep-alives: one open keep-alive stream per lease, on one member, reused across
//! `lease_keep_alive` calls (a renewal is then one message each way rather than a new
//! gRPC stream). A stream whose member breaks or is marked unhealthy is dropped and the
//! lease renewed through another member at once, so that a frozen member cannot let a
//! worker's lease run out. The price is an open stream per live lease, closed once idle
//! for [`KEEPER_IDLE`] or on revoke.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};

use super::members::{Members, Retry};
use crate::store::{LeaseId, StoreError};

/// A lease's keep-alive stream is closed after this long without use.
const KEEPER_IDLE: Duration = Duration::from_secs(60);
/// The least time a renewal on an open stream is given before another member is tried.
const MIN_RENEW_WAIT: Duration = Duration::from_millis(500);

#[derive(Default)]
pub(super) struct Keepers {
    slots: Mutex<HashMap<LeaseId, KeeperSlot>>,
}

struct KeeperSlot {
    last_used: Instant,
    keeper: Arc<tokio::sync::Mutex<Option<Keeper>>>,
}

struct Keeper {
    /// The member the stream is open on.
    member: usize,
    /// The lease's time to live, as its last renewal gave it (`None` until one has).
    ttl: Option<Duration>,
    requests: LeaseKeeper,
    responses: LeaseKeepAliveStream,
}

impl Keepers {
    /// Renews `lease` through its open stream if its member is healthy and answers, else
    /// through a new stream on a healthy member.
    pub async fn keep_alive(&self, members: &Members, lease: LeaseId, timeout: Duration) -> Result<(), StoreError> {
        let slot = self.slot(lease);
        let mut slot = slot.lock().await;
        // Taken out while in use: if this call is dropped halfway, the stream (with a
        // response perhaps still on its way) is dropped too rather than reused.
        if let Some(mut keeper) = slot.take()
            && members.is_healthy(keeper.member)
        {
            let member = keeper.member;
            // A renewal that takes a fair part of the lease's life will not come: waiting
            // for the prober to notice a frozen member could cost the whole lease on a
            // loaded machine, so the stream gets a quarter of it before another member
            // is tried.
            let bound = keeper.ttl.map_or(timeout, |ttl| (ttl / 4).clamp(MIN_RENEW_WAIT, timeout));
            let renew = async {
                keeper.requests.keep_alive().await?;
                Ok::<_, etcd_client::Error>(keeper.responses.message().await?.map(|response| response.ttl()))
            };
            let renewed = tokio::select! {
                renewed = tokio::time::timeout(bound, renew) => match renewed {
                    Ok(renewed) => Some(renewed),
                    Err(_) => {
                        members.mark(member, false, &format!("a lease renewal got no answer within {bound:?}"));
                        None
                    }
                },
                () = members.unhealthy(member) => None,
            };
            match renewed {
                Some(Ok(Some(ttl))) if ttl > 0 => {
                    keeper.ttl = Some(Duration::from_secs(ttl.unsigned_abs()));
                    *slot = Some(keeper);
                    return Ok(());
                }
                Some(Ok(Some(_))) => {
                    self.forget(lease);
                    return Err(StoreError::LeaseNotFound(lease));
                }
                // The stream broke (a member restarted, a connection dropped) or the
                // member froze: open a new one, on another member if need be.
                _ => {}
            }
        }
        // Opening the stream sends the first keep-alive and fails if the lease is gone.
        let opened = members
            .call(Retry::Idempotent, timeout, lease, |attempt| {
                let mut client = attempt.clients.lease;
                async move { client.keep_alive(lease).await }
            })
            .await;
        match opened {
            Ok(called) => {
                let (requests, responses) = called.value;
                *slot = Some(Keeper { member: called.member, ttl: None, requests, responses });
                Ok(())
            }
            Err(e) => {
                self.forget(lease);
                Err(e)
            }
        }
    }

    /// Closes `lease`'s stream, if open.
    pub fn forget(&self, lease: LeaseId) {
        self.slots.lock().expect("keepers lock").remove(&lease);
    }

    /// The keep-alive slot of a lease, created if needed; forgets slots idle too long.
    fn slot(&self, lease: LeaseId) -> Arc<tokio::sync::Mutex<Option<Keeper>>> {
        let now = Instant::now();
        let mut slots = self.slots.lock().expect("keepers lock");
        slots.retain(|id, slot| *id == lease || now.duration_since(slot.last_used) < KEEPER_IDLE);
        let slot = slots.entry(lease).or_insert_with(|| KeeperSlot { last_used: now, keeper: Arc::default() });
        slot.last_used = now;
        slot.keeper.clone()
    }
}
