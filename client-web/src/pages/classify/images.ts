// The Classify page's images: a file input inside a drop zone for PNG and JPEG images,
// and the "Classify images" button that classifies the picked ones again.
import { h } from "../../ui.js";
import { isClassifiableImage } from "../../lib/classify.js";

/** An image to classify. */
export interface ImageItem {
  /** Shown under the thumbnail. */
  name: string;
  /** A URL for the thumbnail (object URL or data URL). */
  src: string;
  bytes: Uint8Array;
}

export interface ImagePicker {
  /** The drop zone (with the file input). */
  drop: HTMLElement;
  /** "Classify images": classifies the last picked images again. */
  run: HTMLButtonElement;
}

/** Images picked or dropped go to `classify` at once; a pick without images goes to `onError`. */
export function imagePicker(opts: { classify(items: ImageItem[]): void; onError(text: string): void }): ImagePicker {
  const files = h("input", { type: "file", name: "images", multiple: true, accept: "image/png,image/jpeg" });
  const drop = h(
    "div",
    { class: "dropzone", "data-testid": "dropzone" },
    h("span", null, "Drop PNG or JPEG images here, or "),
    files,
  );
  const run = h("button", { type: "button", class: "primary", disabled: true, "data-testid": "run" }, "Classify images");
  let picked: ImageItem[] = [];

  async function pick(list: FileList | File[]) {
    const images = [...list].filter(isClassifiableImage);
    if (images.length === 0) {
      opts.onError("Pick PNG or JPEG images.");
      return;
    }
    for (const it of picked) URL.revokeObjectURL(it.src);
    picked = await Promise.all(
      images.map(async (f) => ({ name: f.name, src: URL.createObjectURL(f), bytes: new Uint8Array(await f.arrayBuffer()) })),
    );
    run.disabled = false;
    opts.classify(picked);
  }

  files.addEventListener("change", () => {
    if (files.files?.length) pick(files.files);
  });
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer?.files.length) pick(e.dataTransfer.files);
  });
  run.addEventListener("click", () => {
    if (picked.length) opts.classify(picked);
  });

  return { drop, run };
}
