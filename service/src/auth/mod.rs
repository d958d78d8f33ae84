//! Who is calling, and what they may do.
//!
//! Every gRPC and grpc-web call passes [`layer::authenticate`] before its handler runs.
//! With auth on, the call must carry `authorization: Bearer <secret>`; the secret names
//! a key in the [`KeyRing`], whose role must be one that [`policy`] allows for the
//! method (one table, denying what it does not list). The handler then gets a
//! [`Caller`] in the request's extensions, and scopes what it reads and writes to the
//! caller's tenant: another tenant's job is NOT_FOUND, exactly like a missing one.
//! With auth off (loopback development) every call is an admin of tenant `default`.
//!
//! - [`secret`]: making secrets and hashing them;
//! - [`api_keys`]: the stored keys (`/dhw/keys/<name>`): create, list, revoke;
//! - [`keyring`]: the keys this replica accepts, kept fresh through the hub;
//! - [`policy`]: which roles may call which method;
//! - [`layer`]: the middleware in front of the gRPC routes (and the check `/metrics` makes).

pub mod api_keys;
pub mod keyring;
pub mod layer;
pub mod policy;
pub mod secret;

use std::sync::Arc;

use deephardway::v1::{self, Quota};
use serde::{Deserialize, Serialize};
use tonic::{Request, Status};

pub use keyring::KeyRing;
use secret::SecretHash;

/// The tenant of everything created while auth is off, and of keys created without one.
pub const DEFAULT_TENANT: &str = "default";

/// What a key may do (see `deephardway.v1.Role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Submitter,
    Viewer,
    Worker,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Submitter => "submitter",
            Role::Viewer => "viewer",
            Role::Worker => "worker",
        }
    }

    pub fn from_proto(role: v1::Role) -> Option<Role> {
        match role {
            v1::Role::Admin => Some(Role::Admin),
            v1::Role::Submitter => Some(Role::Submitter),
            v1::Role::Viewer => Some(Role::Viewer),
            v1::Role::Worker => Some(Role::Worker),
            v1::Role::Unspecified => None,
        }
    }

    pub fn to_proto(self) -> v1::Role {
        match self {
            Role::Admin => v1::Role::Admin,
            Role::Submitter => v1::Role::Submitter,
            Role::Viewer => v1::Role::Viewer,
            Role::Worker => v1::Role::Worker,
        }
    }
}

/// A key as the ring holds it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub role: Role,
    pub tenant: String,
    pub quota: Quota,
    pub hash: SecretHash,
}

/// A key given to the process rather than stored: the bootstrap admin key
/// (`DEEPHARDWAY_ADMIN_KEY`), and the key `deephardway up` makes for its own worker.
/// Every replica started with it accepts it; it is revoked by restarting without it.
#[derive(Clone)]
pub struct FixedKey {
    pub name: String,
    pub role: Role,
    pub tenant: String,
    pub secret: String,
}

impl std::fmt::Debug for FixedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FixedKey").field("name", &self.name).field("role", &self.role).finish_non_exhaustive()
    }
}

/// Whether calls must authenticate, and with which keys besides the stored ones.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    pub enabled: bool,
    pub fixed_keys: Vec<FixedKey>,
}

/// The authenticated caller of one call.
#[derive(Clone)]
pub struct Caller {
    pub identity: Arc<Identity>,
    /// The ring that accepted the key; `None` with auth off.
    ring: Option<Arc<KeyRing>>,
}

impl Caller {
    /// Everyone, while auth is off: an admin of the default tenant.
    pub fn anonymous() -> Caller {
        let identity = Identity {
            name: String::new(),
            role: Role::Admin,
            tenant: DEFAULT_TENANT.into(),
            quota: Quota::default(),
            hash: [0; 32],
        };
        Caller { identity: Arc::new(identity), ring: None }
    }

    pub(crate) fn authenticated(identity: Arc<Identity>, ring: Arc<KeyRing>) -> Caller {
        Caller { identity, ring: Some(ring) }
    }

    /// The caller of a request that passed the auth layer.
    pub fn of<T>(request: &Request<T>) -> Result<Caller, Status> {
        request.extensions().get::<Caller>().cloned().ok_or_else(|| Status::internal("the call was not authenticated"))
    }

    pub fn tenant(&self) -> &str {
        &self.identity.tenant
    }

    /// The key's name; empty while auth is off.
    pub fn key(&self) -> &str {
        &self.identity.name
    }

    pub fn is_admin(&self) -> bool {
        self.identity.role == Role::Admin
    }

    /// Whether the caller may see what belongs to `tenant`.
    pub fn sees(&self, tenant: &str) -> bool {
        self.is_admin() || self.identity.tenant == tenant
    }

    /// Completes when the caller's key is revoked (never with auth off, or for a fixed
    /// key). Long streams end on it.
    pub async fn revoked(&self) {
        let Some(ring) = &self.ring else { return std::future::pending().await };
        let mut revocations = ring.revocations();
        loop {
            if !ring.holds(&self.identity.hash) {
                return;
            }
            if revocations.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

/// The status a stream ends with when its key is revoked.
pub fn revoked_status() -> Status {
    Status::unauthenticated("the API key was revoked")
}

/// The tenant a job or other record belongs to: records written before tenants
/// existed belong to the default tenant.
pub fn tenant_of(tenant: &str) -> &str {
    if tenant.is_empty() { DEFAULT_TENANT } else { tenant }
}
