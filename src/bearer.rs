//! The API key a client sends: `authorization: Bearer <secret>` on every call. Wrap a
//! channel with [`ApiKey::attach`] and build any generated client on the result:
//! `JobServiceClient::new(ApiKey::new(key)?.attach(channel))`. Without a key (a service
//! with auth off) nothing is added.

use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

/// A channel whose calls carry the caller's API key.
pub type Authorized = InterceptedService<Channel, ApiKey>;

/// The key to send, if any. Debug output never shows it.
#[derive(Clone, Default)]
pub struct ApiKey(Option<MetadataValue<Ascii>>);

impl ApiKey {
    /// `None` or an empty key sends nothing.
    pub fn new(secret: Option<&str>) -> anyhow::Result<ApiKey> {
        match secret.map(str::trim).filter(|s| !s.is_empty()) {
            None => Ok(ApiKey(None)),
            Some(secret) => {
                let mut value: MetadataValue<Ascii> = format!("Bearer {secret}")
                    .parse()
                    .map_err(|_| anyhow::anyhow!("the API key holds characters a header cannot carry"))?;
                value.set_sensitive(true);
                Ok(ApiKey(Some(value)))
            }
        }
    }

    pub fn attach(self, channel: Channel) -> Authorized {
        InterceptedService::new(channel, self)
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "ApiKey(set)" } else { "ApiKey(none)" })
    }
}

impl Interceptor for ApiKey {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}
