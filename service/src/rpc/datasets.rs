//! `deephardway.v1.DatasetService`: uploads checked and stored by [`crate::datasets`].
//! Datasets belong to the caller's tenant: each tenant has its own names.

use deephardway::v1::{
    CreateDatasetRequest, CreateDatasetResponse, DeleteDatasetRequest, DeleteDatasetResponse, GetDatasetRequest,
    GetDatasetResponse, ListDatasetsRequest, ListDatasetsResponse, dataset_service_server::DatasetService,
};
use tonic::{Request, Response, Status};

use super::{SharedContext, page_token};
use crate::{auth::Caller, datasets, validate};

pub struct DatasetsRpc {
    ctx: SharedContext,
}

impl DatasetsRpc {
    pub fn new(ctx: SharedContext) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl DatasetService for DatasetsRpc {
    async fn create_dataset(
        &self,
        request: Request<CreateDatasetRequest>,
    ) -> Result<Response<CreateDatasetResponse>, Status> {
        let caller = Caller::of(&request)?;
        let CreateDatasetRequest { name, archive } = request.into_inner();
        self.ctx.lifecycle.metrics().uploaded(archive.len());
        let config = self.ctx.lifecycle.config();
        let dataset = datasets::upload(
            self.ctx.lifecycle.store(),
            &config.artifacts,
            caller.tenant(),
            &name,
            archive.into(),
            config.max_upload_bytes,
        )
        .await?;
        Ok(Response::new(CreateDatasetResponse { dataset: Some(dataset) }))
    }

    async fn list_datasets(
        &self,
        request: Request<ListDatasetsRequest>,
    ) -> Result<Response<ListDatasetsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let ListDatasetsRequest { page_size, page_token } = request.into_inner();
        let page_size = validate::page_size(page_size, 100)?;
        let all = datasets::list(self.ctx.lifecycle.store(), caller.tenant()).await?;
        let (datasets, next_page_token) = page_token::page(all, |d| d.name.clone(), page_size, &page_token)?;
        Ok(Response::new(ListDatasetsResponse { datasets, next_page_token }))
    }

    async fn get_dataset(&self, request: Request<GetDatasetRequest>) -> Result<Response<GetDatasetResponse>, Status> {
        let caller = Caller::of(&request)?;
        let name = request.into_inner().name;
        validate::artifact_name("name", &name)?;
        let dataset = datasets::find(self.ctx.lifecycle.store(), caller.tenant(), &name).await?;
        Ok(Response::new(GetDatasetResponse { dataset: Some(dataset) }))
    }

    async fn delete_dataset(
        &self,
        request: Request<DeleteDatasetRequest>,
    ) -> Result<Response<DeleteDatasetResponse>, Status> {
        let caller = Caller::of(&request)?;
        let name = request.into_inner().name;
        let config = self.ctx.lifecycle.config();
        let dataset = datasets::delete(self.ctx.lifecycle.store(), &config.artifacts, caller.tenant(), &name).await?;
        Ok(Response::new(DeleteDatasetResponse { dataset: Some(dataset) }))
    }
}
