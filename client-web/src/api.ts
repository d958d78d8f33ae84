// The service's clients (JobService, ModelService, DatasetService, KeyService,
// UsageService), over one grpc-web transport on the page's own origin. Its interceptors
// (lib/auth.ts) send the tab's API key on every call and report auth errors.
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { JobService } from "./gen/deephardway/v1/jobs_pb.js";
import { ModelService } from "./gen/deephardway/v1/models_pb.js";
import { DatasetService } from "./gen/deephardway/v1/datasets_pb.js";
import { KeyService, UsageService } from "./gen/deephardway/v1/access_pb.js";

export type JobsClient = Client<typeof JobService>;
export type ModelsClient = Client<typeof ModelService>;
export type DatasetsClient = Client<typeof DatasetService>;
export type KeysClient = Client<typeof KeyService>;
export type UsageClient = Client<typeof UsageService>;

export interface Api {
  jobs: JobsClient;
  models: ModelsClient;
  datasets: DatasetsClient;
  keys: KeysClient;
  usage: UsageClient;
}

export interface ApiOptions {
  /**
   * The service. The page's own origin unless VITE_DEEPHARDWAY_URL was set at build
   * (or dev server) time; the service answers grpc-web with CORS, so another origin
   * works too.
   */
  baseUrl?: string;
  /** Run on every call of every client (the auth interceptor). */
  interceptors?: Interceptor[];
}

/**
 * The service's URL: the page's own origin unless VITE_DEEPHARDWAY_URL was set at build
 * (or dev server) time. GET /metrics (the Service page) goes there too.
 */
export function serviceBaseUrl(): string {
  return import.meta.env.VITE_DEEPHARDWAY_URL || window.location.origin;
}

/** The clients, sharing one transport. */
export function createApi(opts: ApiOptions = {}): Api {
  const baseUrl = opts.baseUrl ?? serviceBaseUrl();
  const transport = createGrpcWebTransport({ baseUrl, interceptors: opts.interceptors });
  return {
    jobs: createClient(JobService, transport),
    models: createClient(ModelService, transport),
    datasets: createClient(DatasetService, transport),
    keys: createClient(KeyService, transport),
    usage: createClient(UsageService, transport),
  };
}
