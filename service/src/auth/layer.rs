//! The middleware in front of every gRPC route (grpc-web calls reach it translated):
//! it authenticates the call, checks the role against [`policy`], and
//! puts the [`Caller`] in the request's extensions, where tonic hands it to the handler.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::Response,
};
use http::HeaderMap;
use tonic::Status;

use super::{
    Caller, KeyRing,
    policy::{self, Access},
};

/// Authentication for one server: off, or checked against a key ring.
#[derive(Clone)]
pub struct Auth {
    ring: Option<Arc<KeyRing>>,
}

impl Auth {
    pub fn off() -> Auth {
        Auth { ring: None }
    }

    pub fn with(ring: Arc<KeyRing>) -> Auth {
        Auth { ring: Some(ring) }
    }

    /// The caller of a call to `path`, `None` for public methods, or why it is refused.
    pub fn admit(&self, path: &str, headers: &HeaderMap) -> Result<Option<Caller>, Status> {
        let roles = match policy::access(path) {
            Access::Public => return Ok(None),
            Access::Unknown => return Err(Status::unimplemented(format!("unknown method {path}"))),
            Access::Roles(roles) => roles,
        };
        let Some(ring) = &self.ring else { return Ok(Some(Caller::anonymous())) };
        let secret = bearer(headers)?;
        let identity = ring
            .identify(secret)
            .ok_or_else(|| Status::unauthenticated("the API key was refused: it is unknown or has been revoked"))?;
        if !roles.contains(&identity.role) {
            return Err(Status::permission_denied(format!(
                "a {} key may not call {}",
                identity.role.name(),
                path.trim_start_matches('/')
            )));
        }
        Ok(Some(Caller::authenticated(identity, ring.clone())))
    }
}

/// The secret in `authorization: Bearer <secret>`.
fn bearer(headers: &HeaderMap) -> Result<&str, Status> {
    let missing = || Status::unauthenticated("an API key is required: send the metadata `authorization: Bearer <key>`");
    let value = headers.get(http::header::AUTHORIZATION).ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| missing())?;
    let (scheme, secret) = value.split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") || secret.trim().is_empty() {
        return Err(missing());
    }
    Ok(secret.trim())
}

/// The middleware: admits the call or answers with its gRPC status.
pub async fn authenticate(State(auth): State<Auth>, mut request: Request, next: Next) -> Response {
    match auth.admit(request.uri().path(), request.headers()) {
        Ok(caller) => {
            if let Some(caller) = caller {
                request.extensions_mut().insert(caller);
            }
            next.run(request).await
        }
        Err(status) => status.into_http(),
    }
}
