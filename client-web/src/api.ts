// The service's clients (Jobs, Models, Datasets), over grpc-web on the page's own origin.
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { Jobs } from "./gen/deephardway/v1/jobs_pb.js";
import { Models } from "./gen/deephardway/v1/models_pb.js";
import { Datasets } from "./gen/deephardway/v1/datasets_pb.js";

export type JobsClient = Client<typeof Jobs>;
export type ModelsClient = Client<typeof Models>;
export type DatasetsClient = Client<typeof Datasets>;

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
    jobs: createClient(Jobs, transport),
    models: createClient(Models, transport),
    datasets: createClient(Datasets, transport),
  };
}
