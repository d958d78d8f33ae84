//! `deephardway.v1.Datasets`: uploads checked and stored by [`crate::datasets`].

use deephardway::v1::{
    Dataset, DeleteDatasetRequest, GetDatasetRequest, ListDatasetsRequest, ListDatasetsResponse, UploadDatasetRequest,
    datasets_server::Datasets,
};
use tonic::{Request, Response, Status};

use super::SharedContext;
use crate::{datasets, jobs::validate};

pub struct DatasetsRpc {
    ctx: SharedContext,
}

impl DatasetsRpc {
    pub fn new(ctx: SharedContext) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl Datasets for DatasetsRpc {
    async fn upload(&self, request: Request<UploadDatasetRequest>) -> Result<Response<Dataset>, Status> {
        let UploadDatasetRequest { name, archive } = request.into_inner();
        let config = self.ctx.lifecycle.config();
        let dataset = datasets::upload(
            self.ctx.lifecycle.store(),
            &config.artifacts,
            &name,
            archive.into(),
            config.max_upload_bytes,
        )
        .await?;
        Ok(Response::new(dataset))
    }

    async fn list(&self, _: Request<ListDatasetsRequest>) -> Result<Response<ListDatasetsResponse>, Status> {
        Ok(Response::new(ListDatasetsResponse { datasets: datasets::list(self.ctx.lifecycle.store()).await? }))
    }

    async fn get(&self, request: Request<GetDatasetRequest>) -> Result<Response<Dataset>, Status> {
        let name = request.into_inner().name;
        validate::artifact_name("name", &name)?;
        Ok(Response::new(datasets::find(self.ctx.lifecycle.store(), &name).await?))
    }

    async fn delete(&self, request: Request<DeleteDatasetRequest>) -> Result<Response<Dataset>, Status> {
        let name = request.into_inner().name;
        let config = self.ctx.lifecycle.config();
        Ok(Response::new(datasets::delete(self.ctx.lifecycle.store(), &config.artifacts, &name).await?))
    }
}
