//! `deephardway.v1.Models`: what the connected workers serve, read from their records.

use std::collections::BTreeMap;

use deephardway::v1::{JobKind, ListModelsRequest, ListModelsResponse, ModelInfo, models_server::Models};
use tonic::{Request, Response, Status};

use super::SharedContext;

pub struct ModelsRpc {
    ctx: SharedContext,
}

impl ModelsRpc {
    pub fn new(ctx: SharedContext) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl Models for ModelsRpc {
    async fn list(&self, request: Request<ListModelsRequest>) -> Result<Response<ListModelsResponse>, Status> {
        let kind = request.into_inner().kind;
        JobKind::try_from(kind).map_err(|_| Status::invalid_argument(format!("kind: {kind} is not a JobKind")))?;
        let mut models: BTreeMap<(String, i32), ModelInfo> = BTreeMap::new();
        for worker in self.ctx.lifecycle.workers().await? {
            for m in worker.models.iter().filter(|m| kind == 0 || m.kind == kind) {
                let info = models.entry((m.name.clone(), m.kind)).or_insert_with(|| ModelInfo {
                    name: m.name.clone(),
                    kind: m.kind,
                    description: m.description.clone(),
                    context_length: m.context_length,
                    ..Default::default()
                });
                info.workers += 1;
                if !info.devices.contains(&worker.device) {
                    info.devices.push(worker.device.clone());
                }
            }
        }
        Ok(Response::new(ListModelsResponse { models: models.into_values().collect() }))
    }
}
