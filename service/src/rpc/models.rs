//! `deephardway.v1.ModelService`: what the connected workers serve, read from their records,
//! and the trained models of the caller's tenant, which run wherever a worker announces
//! the classifier.

use std::collections::BTreeMap;

use deephardway::v1::{JobKind, ListModelsRequest, ListModelsResponse, Model, model_service_server::ModelService};
use tonic::{Request, Response, Status};

use super::{SharedContext, page_token};
use crate::{auth::Caller, trained_models, validate};

pub struct ModelsRpc {
    ctx: SharedContext,
}

impl ModelsRpc {
    pub fn new(ctx: SharedContext) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl ModelService for ModelsRpc {
    async fn list_models(&self, request: Request<ListModelsRequest>) -> Result<Response<ListModelsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let ListModelsRequest { kind, page_size, page_token } = request.into_inner();
        validate::known_enum::<JobKind>("kind", kind)?;
        let page_size = validate::page_size(page_size, 100)?;
        let mut models: BTreeMap<(String, i32), Model> = BTreeMap::new();
        for worker in self.ctx.lifecycle.workers().await? {
            for m in worker.models.iter().filter(|m| kind == 0 || m.kind == kind) {
                let info = models.entry((m.name.clone(), m.kind)).or_insert_with(|| Model {
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
        // The classifier capability is not a model a job can name: the trained models are,
        // and they run where it is served.
        // (Listed with no workers while none serves it.)
        let classifiers =
            models.remove(&(deephardway::CLASSIFIER_MODEL.to_string(), JobKind::Classify as i32)).unwrap_or_default();
        if kind == 0 || kind == JobKind::Classify as i32 {
            for trained in trained_models::latest(self.ctx.lifecycle.store(), caller.tenant()).await? {
                let description = format!(
                    "{} trained on {} (version {}, validation accuracy {:.1}%)",
                    trained.architecture().as_str_name().trim_start_matches("ARCHITECTURE_").to_lowercase(),
                    trained.dataset,
                    trained.version,
                    100.0 * trained.validation_accuracy
                );
                models.insert(
                    (trained.name.clone(), JobKind::Classify as i32),
                    Model {
                        name: trained.name.clone(),
                        kind: JobKind::Classify as i32,
                        description,
                        workers: classifiers.workers,
                        devices: classifiers.devices.clone(),
                        context_length: 0,
                        trained: Some(trained),
                    },
                );
            }
        }
        // A name can serve two kinds of job: the cursor is both.
        let cursor = |m: &Model| format!("{} {}", m.name, m.kind);
        let (models, next_page_token) =
            page_token::page(models.into_values().collect(), cursor, page_size, &page_token)?;
        Ok(Response::new(ListModelsResponse { models, next_page_token }))
    }
}
