// The Train page's datasets section: upload an archive (CreateDataset), the table of
// datasets (ListDatasets, every page) with "Train on it" and Delete (DeleteDataset).
import type { AppContext } from "../../page.js";
import type { Dataset } from "../../gen/deephardway/v1/datasets_pb.js";
import { field, h, messageBox, setChildren } from "../../ui.js";
import { errorText, tsMs } from "../../lib/format.js";
import { allPages } from "../../lib/paging.js";
import { classList, datasetNameFromFile, datasetSummary, formatBytes } from "../../lib/train.js";

export interface DatasetsSection {
  /** The section's elements, in page order: form, error, upload info, table. */
  els: HTMLElement[];
  /** Lists the datasets again; `choose` is passed on to onListed. */
  refresh(choose?: string): Promise<void>;
}

export interface DatasetsOptions {
  /** After every listing: all the datasets, and the one to select for training (just uploaded). */
  onListed(datasets: Dataset[], choose?: string): void;
  /** A row's "Train on it". */
  onUse(name: string): void;
}

export function datasetsSection(ctx: AppContext, opts: DatasetsOptions): DatasetsSection {
  const dsName = h("input", { type: "text", name: "dataset_name", placeholder: "from the file's name" });
  const dsFile = h("input", {
    type: "file",
    name: "archive",
    accept: ".zip,.tar,.tar.gz,.tgz,application/zip,application/x-tar,application/gzip",
  });
  const upload = h("button", { type: "submit", class: "primary", "data-testid": "upload" }, "Upload");
  const dsInfo = h("div", { class: "result", "data-testid": "dataset-info" });
  const dsError = messageBox();
  dsError.el.dataset.testid = "dataset-error";
  const dsBody = h("tbody");
  const dsTable = h(
    "table",
    { class: "datasets", "data-testid": "datasets" },
    h("thead", null, h("tr", null, ["Name", "Classes", "Train", "Test", "Size", "Uploaded", ""].map((t) => h("th", null, t)))),
    dsBody,
  );
  let autoName = "";

  dsFile.addEventListener("change", () => {
    const f = dsFile.files?.[0];
    if (!f) return;
    // Follow the file's name unless the user typed one.
    if (!dsName.value || dsName.value === autoName) {
      autoName = datasetNameFromFile(f.name);
      dsName.value = autoName;
    }
  });

  const dsForm = h(
    "form",
    { class: "form", novalidate: true },
    h(
      "div",
      { class: "row" },
      field("Archive", dsFile, "zip, tar or tar.gz: one folder per class, or train/ and test/ holding them"),
      field("Name", dsName, "letters, digits and ._-"),
    ),
    h("div", { class: "actions" }, upload),
  );

  dsForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    dsError.clear();
    setChildren(dsInfo);
    const f = dsFile.files?.[0];
    if (!f) {
      dsError.show("Pick an archive first.");
      return;
    }
    const name = dsName.value.trim() || datasetNameFromFile(f.name);
    upload.disabled = true;
    dsInfo.textContent = `Uploading ${f.name} (${formatBytes(f.size)})…`;
    try {
      const archive = new Uint8Array(await f.arrayBuffer());
      const d = (await ctx.api.datasets.createDataset({ name, archive })).dataset;
      if (!d) throw new Error("CreateDataset returned no dataset");
      setChildren(dsInfo, `Dataset ${d.name}: ${datasetSummary(d)}`);
      dsInfo.dataset.dataset = d.name;
      await refresh(d.name);
    } catch (err) {
      setChildren(dsInfo);
      dsError.show(errorText(err));
    } finally {
      upload.disabled = false;
    }
  });

  async function deleteDataset(name: string) {
    dsError.clear();
    try {
      await ctx.api.datasets.deleteDataset({ name });
      if (dsInfo.dataset.dataset === name) {
        setChildren(dsInfo);
        delete dsInfo.dataset.dataset;
      }
      await refresh();
    } catch (err) {
      dsError.show(`Delete ${name}: ${errorText(err)}`);
    }
  }

  function datasetRow(d: Dataset): HTMLTableRowElement {
    const created = tsMs(d.createTime);
    return h(
      "tr",
      { "data-dataset": d.name },
      h("td", { class: "mono" }, d.name),
      h("td", { title: d.classes.join(", ") }, `${d.classes.length}: ${classList(d.classes, 10)}`),
      h("td", { class: "num" }, String(d.trainImages)),
      h("td", { class: "num" }, String(d.testImages)),
      h("td", { class: "num" }, formatBytes(d.archiveBytes)),
      h("td", null, created ? new Date(created).toLocaleString() : ""),
      h(
        "td",
        { class: "buttons" },
        h("button", { type: "button", class: "small", "data-testid": "use", onclick: () => opts.onUse(d.name) }, "Train on it"),
        h("button", { type: "button", class: "small", "data-testid": "delete", onclick: () => deleteDataset(d.name) }, "Delete"),
      ),
    );
  }

  async function refresh(choose?: string) {
    try {
      const datasets = await allPages((pageToken) =>
        ctx.api.datasets.listDatasets({ pageToken }).then((r) => ({ items: r.datasets, nextPageToken: r.nextPageToken })),
      );
      setChildren(
        dsBody,
        datasets.length ? datasets.map(datasetRow) : h("tr", null, h("td", { colspan: 7, class: "empty" }, "No datasets yet: upload one.")),
      );
      opts.onListed(datasets, choose);
    } catch (err) {
      dsError.show(`ListDatasets: ${errorText(err)}`);
    }
  }

  return { els: [dsForm, dsError.el, dsInfo, h("div", { class: "scroll" }, dsTable)], refresh };
}
