// The Train page's live curves: loss, and train and validation accuracy, by step, from
// a train job's progress metrics (src/lib/curves.ts), redrawn at most once a frame.
import { lineChart } from "../../chart.js";
import { h } from "../../ui.js";
import { addMetrics, emptyCurves, type TrainCurves } from "../../lib/curves.js";

const COLORS = { loss: "#c0392b", train: "#2f5fd0", validation: "#1d9a4a" };

export interface TrainCharts {
  el: HTMLElement;
  /** Empties the curves and redraws. */
  reset(): void;
  /** Adds a progress event's metrics; redraws on the next frame when a curve changed. */
  add(metrics: { [key: string]: number }): void;
  /** Redraws now (at the final event, so that the last points show). */
  draw(): void;
  /** The latest epoch, step and images/s seen. */
  last(): TrainCurves["last"];
}

export function trainCharts(): TrainCharts {
  const lossChart = lineChart({ title: "Loss", xLabel: "step", testId: "chart-loss" });
  const accChart = lineChart({ title: "Accuracy", xLabel: "step", yDomain: [0, 1], testId: "chart-accuracy" });
  let curves: TrainCurves = emptyCurves();
  let drawQueued = false;

  function draw() {
    drawQueued = false;
    lossChart.update([{ name: "loss", color: COLORS.loss, points: curves.loss }]);
    accChart.update([
      { name: "train", color: COLORS.train, points: curves.trainAccuracy },
      { name: "validation", color: COLORS.validation, points: curves.validationAccuracy },
    ]);
  }

  function scheduleDraw() {
    if (drawQueued) return;
    drawQueued = true;
    requestAnimationFrame(draw);
  }

  return {
    el: h("div", { class: "charts" }, lossChart.el, accChart.el),
    reset() {
      curves = emptyCurves();
      draw();
    },
    add(metrics) {
      if (addMetrics(curves, metrics)) scheduleDraw();
    },
    draw,
    last: () => curves.last,
  };
}
