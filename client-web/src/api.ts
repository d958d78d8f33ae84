// The service's clients (JobService, ModelService, DatasetService), over grpc-web on
// the page's own origin.
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { JobService } from "./gen/deephardway/v1/jobs_pb.js";
import { ModelService } from "./gen/deephardway/v1/models_pb.js";
import { DatasetService } from "./gen/deephardway/v1/datasets_pb.js";

export type JobsClient = Client<typeof JobService>;
export type ModelsClient = Client<typeof ModelService>;
export type DatasetsClient = Client<typeof DatasetService>;

export interface Api {
  jobs: JobsClient;
  models: ModelsClient;
  datasets: DatasetsClient;
}

/**
 * The clients. The service is the page's own origin unless VITE_DEEPHARDWAY_URL was set
 * at build (or dev server) time; the service answers grpc-web with CORS, so another
 * origin works too.
 */
export function createApi(baseUrl: string = import.meta.env.VITE_DEEPHARDWAY_URL || window.location.origin): Api {
  const transport = createGrpcWebTransport({ baseUrl });
  return {
    jobs: createClient(JobService, transport),
    models: createClient(ModelService, transport),
    datasets: createClient(DatasetService, transport),
  };
}
