// ModelService.ListModels (every page of it), cached, and the model dropdowns it fills.
import type { JobKind } from "./gen/deephardway/v1/jobs_pb.js";
import type { Model } from "./gen/deephardway/v1/models_pb.js";
import type { ModelsClient } from "./api.js";
import { allPages } from "./lib/paging.js";
import { h } from "./ui.js";

export class ModelsStore {
  private pending: Promise<Model[]> | undefined;
  constructor(private client: ModelsClient) {}

  /** All served models; `refresh` asks the service again. */
  list(refresh = false): Promise<Model[]> {
    if (refresh || !this.pending) {
      const p = allPages((pageToken) =>
        this.client.listModels({ pageToken }).then((r) => ({ items: r.models, nextPageToken: r.nextPageToken })),
      );
      p.catch(() => {
        if (this.pending === p) this.pending = undefined; // retry on the next call
      });
      this.pending = p;
    }
    return this.pending;
  }

  /** Forgets the cached list (another API key may see other models). */
  reset() {
    this.pending = undefined;
  }

  async ofKind(kind: JobKind, refresh = false): Promise<Model[]> {
    return (await this.list(refresh)).filter((m) => m.kind === kind);
  }
}

/** Fills a <select> with the models of a kind, keeping the current choice if still there. */
export function fillModelSelect(select: HTMLSelectElement, models: Model[]) {
  const current = select.value;
  select.replaceChildren(
    ...models.map((m) => {
      const devices = m.devices.length ? ` [${m.devices.join(", ")}]` : "";
      const opt = h("option", { value: m.name }, `${m.name}${devices}`);
      opt.title = m.description;
      return opt;
    }),
  );
  if (models.length === 0) select.appendChild(h("option", { value: "" }, "(no model served)"));
  if (models.some((m) => m.name === current)) select.value = current;
}
