// The Classify page's drawing canvas: a pointer draws strokes, white on black for
// grayscale models (such as digits) and black on white otherwise, with a brush sized to
// the model's input pixels.
import type { TrainedModel } from "../../gen/deephardway/v1/models_pb.js";
import { h } from "../../ui.js";
import { brushWidth, inkOnBlack } from "../../lib/classify.js";
import type { ImageItem } from "./images.js";

const CANVAS_SIZE = 224;

export interface DrawingPad {
  canvas: HTMLCanvasElement;
  /** Clears the canvas for a model: its background, ink and brush. */
  reset(trained: TrainedModel | undefined): void;
  /** The drawing as a PNG image named "drawing"; undefined when the canvas cannot be read. */
  image(): Promise<ImageItem | undefined>;
}

export function drawingPad(): DrawingPad {
  const canvas = h("canvas", { width: CANVAS_SIZE, height: CANVAS_SIZE, class: "drawing", "data-testid": "canvas" });
  const g = canvas.getContext("2d")!;
  let drawing = false;
  let last: [number, number] | undefined;
  let ink = "#fff";

  function reset(trained: TrainedModel | undefined) {
    const black = inkOnBlack(trained);
    ink = black ? "#fff" : "#000";
    g.fillStyle = black ? "#000" : "#fff";
    g.fillRect(0, 0, CANVAS_SIZE, CANVAS_SIZE);
    g.lineCap = "round";
    g.lineJoin = "round";
    g.lineWidth = brushWidth(CANVAS_SIZE, trained?.inputSize ?? 28);
  }

  function pos(e: PointerEvent): [number, number] {
    const r = canvas.getBoundingClientRect();
    return [((e.clientX - r.left) * CANVAS_SIZE) / r.width, ((e.clientY - r.top) * CANVAS_SIZE) / r.height];
  }

  function lineTo(p: [number, number]) {
    const from = last ?? p;
    g.strokeStyle = ink;
    g.beginPath();
    g.moveTo(from[0], from[1]);
    g.lineTo(p[0] + (from === p ? 0.01 : 0), p[1]);
    g.stroke();
    last = p;
  }

  canvas.addEventListener("pointerdown", (e) => {
    drawing = true;
    last = undefined;
    canvas.setPointerCapture(e.pointerId);
    lineTo(pos(e));
    e.preventDefault();
  });
  canvas.addEventListener("pointermove", (e) => {
    if (drawing) lineTo(pos(e));
  });
  const end = () => {
    drawing = false;
    last = undefined;
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);

  async function image(): Promise<ImageItem | undefined> {
    const blob = await new Promise<Blob | null>((res) => canvas.toBlob(res, "image/png"));
    if (!blob) return undefined;
    return { name: "drawing", src: canvas.toDataURL("image/png"), bytes: new Uint8Array(await blob.arrayBuffer()) };
  }

  return { canvas, reset, image };
}
