// The Train page's training form: the dataset, every TrainInput option, the presets,
// and the Train and Stop buttons. Its values are read as a TrainForm (src/lib/train.ts).
import { Architecture, LearningRateSchedule, Optimizer } from "../../gen/deephardway/v1/inputs_pb.js";
import { enumSelect, field, h, setChildren } from "../../ui.js";
import { ARCHITECTURE_OPTIONS, OPTIMIZER_OPTIONS, SCHEDULE_OPTIONS } from "../../lib/enums.js";
import { DEFAULT_FORM, PRESETS, presetDataset, type TrainForm } from "../../lib/train.js";

/** The form's text fields (all but the dataset and the enum choices). */
type TextField = Exclude<keyof TrainForm, "dataset" | "architecture" | "optimizer" | "learningRateSchedule">;

export interface TrainFormView {
  el: HTMLFormElement;
  run: HTMLButtonElement;
  stop: HTMLButtonElement;
  /** The values as typed and chosen. */
  read(): TrainForm;
  /** The datasets to choose from; keeps the current choice if still there, else picks `choose` when given. */
  setDatasets(names: string[], choose?: string): void;
  /** Selects a dataset for training. */
  chooseDataset(name: string): void;
}

export function trainFormView(): TrainFormView {
  const dataset = h("select", { name: "dataset" });
  const architecture = enumSelect("architecture", Architecture, ARCHITECTURE_OPTIONS);
  const optimizer = enumSelect("optimizer", Optimizer, OPTIMIZER_OPTIONS);
  const schedule = enumSelect("learning_rate_schedule", LearningRateSchedule, SCHEDULE_OPTIONS);
  const text: { [K in TextField]: HTMLInputElement } = {
    hiddenSizes: h("input", { type: "text", name: "hidden_sizes" }),
    inputSize: h("input", { type: "number", name: "input_size", min: 0 }),
    epochs: h("input", { type: "number", name: "epochs", min: 1 }),
    batchSize: h("input", { type: "number", name: "batch_size", min: 0 }),
    learningRate: h("input", { type: "number", name: "learning_rate", step: "0.0001" }),
    validationSplit: h("input", { type: "number", name: "validation_split", step: "0.05", min: 0, max: 0.5 }),
    seed: h("input", { type: "text", name: "seed", placeholder: "random" }),
    augmentShift: h("input", { type: "number", name: "augment_shift", min: 0, max: 8 }),
    outputModel: h("input", { type: "text", name: "output_model", placeholder: "the dataset's name" }),
  };
  const hiddenField = field("Hidden sizes", text.hiddenSizes, "mlp layers, e.g. 20, 7, 5");
  const showHidden = () => (hiddenField.hidden = architecture.get() === Architecture.CNN);
  architecture.el.addEventListener("change", showHidden);
  let datasetNames: string[] = [];

  function set(values: Partial<TrainForm>) {
    for (const k of Object.keys(text) as TextField[]) {
      const v = values[k];
      if (v !== undefined) text[k].value = v;
    }
    if (values.architecture !== undefined) architecture.set(values.architecture);
    if (values.optimizer !== undefined) optimizer.set(values.optimizer);
    if (values.learningRateSchedule !== undefined) schedule.set(values.learningRateSchedule);
    showHidden();
  }

  function read(): TrainForm {
    const f = {
      dataset: dataset.value,
      architecture: architecture.get(),
      optimizer: optimizer.get(),
      learningRateSchedule: schedule.get(),
    } as TrainForm;
    for (const k of Object.keys(text) as TextField[]) f[k] = text[k].value;
    return f;
  }

  function setDatasets(names: string[], choose?: string) {
    datasetNames = names;
    const current = dataset.value;
    setChildren(dataset, names.length ? names.map((n) => h("option", { value: n }, n)) : h("option", { value: "" }, "(no dataset)"));
    if (names.includes(current)) dataset.value = current;
    if (choose && names.includes(choose)) dataset.value = choose;
  }

  set(DEFAULT_FORM);

  const presets = h(
    "div",
    { class: "presets" },
    h("span", { class: "label" }, "Presets:"),
    PRESETS.map((p) =>
      h(
        "button",
        {
          type: "button",
          class: "small",
          "data-preset": p.id,
          onclick: () => {
            set(p.values);
            dataset.value = presetDataset(p, datasetNames, dataset.value);
          },
        },
        p.title,
      ),
    ),
  );

  const run = h("button", { type: "submit", class: "primary", "data-testid": "run" }, "Train");
  const stop = h("button", { type: "button", disabled: true, "data-testid": "stop" }, "Stop");
  const el = h(
    "form",
    { class: "form", novalidate: true },
    presets,
    h(
      "div",
      { class: "row" },
      field("Dataset", dataset),
      field("Architecture", architecture.el),
      hiddenField,
      field("Input size", text.inputSize, "pixels a side; 0: the dataset's"),
      field("Output model", text.outputModel),
    ),
    h(
      "div",
      { class: "row" },
      field("Epochs", text.epochs),
      field("Batch size", text.batchSize, "0: the whole set"),
      field("Optimizer", optimizer.el),
      field("Learning rate", text.learningRate),
      field("Schedule", schedule.el),
    ),
    h(
      "div",
      { class: "row" },
      field("Validation split", text.validationSplit, "0: the test/ images"),
      field("Augment shift", text.augmentShift, "pixels, 0 to 8"),
      field("Seed", text.seed, "empty: random"),
    ),
    h("div", { class: "actions" }, run, stop),
  );

  return { el, run, stop, read, setDatasets, chooseDataset: (name) => (dataset.value = name) };
}
