// A small SVG line chart: axes with ticks, one line (with dots) per series, a legend.
// The geometry is src/lib/chart.ts; this only makes the elements.
import { layoutChart, type Series } from "./lib/chart.js";
import { h } from "./ui.js";

const NS = "http://www.w3.org/2000/svg";

function svg<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number>, ...children: (Node | string)[]) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children) el.append(c);
  return el;
}

export interface LineChart {
  el: HTMLElement;
  /** Redraws with these series (their points are read, not kept). */
  update(series: Series[]): void;
}

/**
 * A chart of fixed size. `yDomain` fixes the y range (0..1 for accuracies); the x
 * axis is labelled `xLabel`. The <svg> carries data-points: the number of points drawn.
 */
export function lineChart(opts: {
  title: string;
  xLabel: string;
  yDomain?: [number, number];
  /** A fixed x range: the chart does not rescale as points come (a time window). */
  xDomain?: [number, number];
  width?: number;
  height?: number;
  testId?: string;
  /** The legend's text of a series' last value (default: integers as they are, others to 3 or 4 decimals). */
  valueText?: (y: number) => string;
}): LineChart {
  const width = opts.width ?? 520;
  const height = opts.height ?? 220;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, class: "chart-svg", role: "img", "aria-label": opts.title });
  const legend = h("div", { class: "legend" });
  const el = h("figure", { class: "chart", "data-testid": opts.testId }, h("figcaption", null, opts.title, h("small", null, ` by ${opts.xLabel}`)), root, legend);

  function update(series: Series[]) {
    const layout = layoutChart(series, { width, height, yDomain: opts.yDomain, xDomain: opts.xDomain });
    const { plot } = layout;
    const grid = svg("g", { class: "grid" });
    for (const t of layout.yTicks) {
      grid.append(
        svg("line", { x1: plot.left, x2: plot.right, y1: t.pos, y2: t.pos }),
        svg("text", { x: plot.left - 6, y: t.pos + 4, "text-anchor": "end" }, t.label),
      );
    }
    for (const t of layout.xTicks) {
      grid.append(
        svg("line", { x1: t.pos, x2: t.pos, y1: plot.bottom, y2: plot.bottom + 4 }),
        svg("text", { x: t.pos, y: plot.bottom + 16, "text-anchor": "middle" }, t.label),
      );
    }
    grid.append(
      svg("line", { class: "axis", x1: plot.left, x2: plot.right, y1: plot.bottom, y2: plot.bottom }),
      svg("line", { class: "axis", x1: plot.left, x2: plot.left, y1: plot.top, y2: plot.bottom }),
    );
    const lines = layout.lines.map((l) => {
      const g = svg("g", { class: "series", "data-series": l.name, "data-points": l.dots.length });
      if (l.dots.length > 1) g.append(svg("path", { d: l.d, fill: "none", stroke: l.color, "stroke-width": 2 }));
      // Dots only where they are few enough to see.
      if (l.dots.length <= 60) for (const [x, y] of l.dots) g.append(svg("circle", { cx: x, cy: y, r: 2.5, fill: l.color }));
      return g;
    });
    root.replaceChildren(grid, ...lines);
    root.setAttribute("data-points", String(series.reduce((n, s) => n + s.points.length, 0)));
    legend.replaceChildren(
      ...series.map((s) => {
        const last = s.points[s.points.length - 1];
        return h(
          "span",
          { class: "key" },
          h("i", { style: { background: s.color } }),
          `${s.name}${last ? ` ${opts.valueText ? opts.valueText(last.y) : Number.isInteger(last.y) ? last.y : last.y.toFixed(opts.yDomain ? 3 : 4)}` : ""}`,
        );
      }),
    );
  }
  update([]);
  return { el, update };
}
