//! `deephardway.v1.KeyService` (admins manage API keys; see [`crate::auth`]) and
//! `deephardway.v1.UsageService` (what each key used; see [`crate::usage`]).

use deephardway::v1::{
    CreateKeyRequest, CreateKeyResponse, ListKeysRequest, ListKeysResponse, ListUsageRequest, ListUsageResponse,
    RevokeKeyRequest, RevokeKeyResponse, key_service_server::KeyService, usage_service_server::UsageService,
};
use tonic::{Request, Response, Status};

use super::SharedContext;
use crate::{
    auth::{Caller, api_keys},
    usage,
};

pub struct KeysRpc {
    ctx: SharedContext,
}

impl KeysRpc {
    pub fn new(ctx: SharedContext) -> Self {
        Self { ctx }
    }

    /// This replica knows the change before the call returns; the others within their
    /// watch's latency (see `KeyRing`).
    async fn refresh_keyring(&self) {
        if let Some(ring) = &self.ctx.keyring
            && let Err(e) = ring.reload().await
        {
            tracing::warn!(error = %e, "cannot re-read the API keys; the watch will catch up");
        }
    }
}

#[tonic::async_trait]
impl KeyService for KeysRpc {
    async fn create_key(&self, request: Request<CreateKeyRequest>) -> Result<Response<CreateKeyResponse>, Status> {
        let caller = Caller::of(&request)?;
        let creator = if caller.key().is_empty() { "anonymous" } else { caller.key() };
        let (key, secret) = api_keys::create(self.ctx.lifecycle.store(), request.into_inner(), creator).await?;
        self.refresh_keyring().await;
        Ok(Response::new(CreateKeyResponse { key: Some(key), secret }))
    }

    async fn list_keys(&self, request: Request<ListKeysRequest>) -> Result<Response<ListKeysResponse>, Status> {
        let tenant = request.into_inner().tenant;
        if !tenant.is_empty() {
            api_keys::check_name("tenant", &tenant)?;
        }
        let keys = api_keys::list(self.ctx.lifecycle.store())
            .await?
            .into_iter()
            .filter(|k| tenant.is_empty() || k.tenant == tenant)
            .map(|k| k.to_proto())
            .collect();
        Ok(Response::new(ListKeysResponse { keys }))
    }

    async fn revoke_key(&self, request: Request<RevokeKeyRequest>) -> Result<Response<RevokeKeyResponse>, Status> {
        let key = api_keys::revoke(self.ctx.lifecycle.store(), &request.into_inner().name).await?;
        self.refresh_keyring().await;
        Ok(Response::new(RevokeKeyResponse { key: Some(key) }))
    }
}

pub struct UsageRpc {
    ctx: SharedContext,
}

impl UsageRpc {
    pub fn new(ctx: SharedContext) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl UsageService for UsageRpc {
    async fn list_usage(&self, request: Request<ListUsageRequest>) -> Result<Response<ListUsageResponse>, Status> {
        let caller = Caller::of(&request)?;
        let asked = request.into_inner().tenant;
        if !asked.is_empty() {
            api_keys::check_name("tenant", &asked)?;
        }
        let tenant = match (caller.is_admin(), asked.is_empty()) {
            (true, true) => None,
            (true, false) => Some(asked.as_str()),
            // Another tenant's usage is not shown, and not said to exist.
            (false, false) if asked != caller.tenant() => return Ok(Response::new(ListUsageResponse::default())),
            (false, _) => Some(caller.tenant()),
        };
        let usage = usage::list(self.ctx.lifecycle.store(), tenant).await?;
        Ok(Response::new(ListUsageResponse { usage }))
    }
}
