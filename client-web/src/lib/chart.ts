// Line chart geometry: scales, nice ticks and SVG path data. Pure, no DOM; the SVG
// elements are made by src/chart.ts.

export interface Point {
  x: number;
  y: number;
}

export interface Series {
  name: string;
  color: string;
  points: Point[];
}

export interface Tick {
  value: number;
  /** Position in pixels along the axis. */
  pos: number;
  label: string;
}

export interface ChartLayout {
  width: number;
  height: number;
  /** The plot area inside the margins. */
  plot: { left: number; top: number; right: number; bottom: number };
  xTicks: Tick[];
  yTicks: Tick[];
  lines: { name: string; color: string; d: string; dots: [number, number][] }[];
}

export interface LayoutOptions {
  width: number;
  height: number;
  margin?: { left: number; top: number; right: number; bottom: number };
  /** A fixed y range (e.g. 0..1 for accuracies); otherwise the data's, niced. */
  yDomain?: [number, number];
  /** A fixed x range (e.g. -300..0 for the last five minutes); otherwise 0 or 1 to the data's largest x. */
  xDomain?: [number, number];
  xTickCount?: number;
  yTickCount?: number;
}

/** A linear map from `domain` to `range`; a zero-width domain maps to the range's middle. */
export function linearScale(domain: [number, number], range: [number, number]): (v: number) => number {
  const [d0, d1] = domain;
  const [r0, r1] = range;
  if (d1 === d0) return () => (r0 + r1) / 2;
  const k = (r1 - r0) / (d1 - d0);
  return (v) => r0 + (v - d0) * k;
}

/** The step of about `count` ticks over max − min: 1, 2 or 5 times a power of ten. */
export function tickStep(min: number, max: number, count: number): number {
  const span = Math.abs(max - min);
  if (!(span > 0) || !Number.isFinite(span)) return 1;
  const raw = span / Math.max(1, count);
  const pow = 10 ** Math.floor(Math.log10(raw));
  const f = raw / pow;
  return (f >= 7.5 ? 10 : f >= 3.5 ? 5 : f >= 1.5 ? 2 : 1) * pow;
}

/** Ticks at multiples of tickStep inside [min, max]. */
export function niceTicks(min: number, max: number, count = 5): number[] {
  if (!Number.isFinite(min) || !Number.isFinite(max)) return [];
  if (min > max) [min, max] = [max, min];
  if (min === max) return [min];
  const step = tickStep(min, max, count);
  const out: number[] = [];
  const first = Math.ceil(min / step - 1e-9);
  const last = Math.floor(max / step + 1e-9);
  for (let i = first; i <= last; i++) out.push(round(i * step, step));
  return out;
}

/** [min, max] widened to the enclosing tick multiples (a zero-width range grows by one step each way). */
export function niceDomain(min: number, max: number, count = 5): [number, number] {
  if (min === max) {
    const pad = min === 0 ? 1 : Math.abs(min) * 0.1;
    return [min - pad, max + pad];
  }
  const step = tickStep(min, max, count);
  return [round(Math.floor(min / step + 1e-9) * step, step), round(Math.ceil(max / step - 1e-9) * step, step)];
}

function round(v: number, step: number): number {
  const digits = Math.max(0, -Math.floor(Math.log10(step)) + 1);
  return Number(v.toFixed(Math.min(20, digits)));
}

/** A tick label: integers as they are, others with as many decimals as the step needs. */
export function tickLabel(value: number, step: number): string {
  if (Number.isInteger(value) && step >= 1) {
    return Math.abs(value) >= 10000 ? `${+(value / 1000).toFixed(1)}k` : String(value);
  }
  const decimals = Math.max(0, Math.min(6, -Math.floor(Math.log10(step))));
  return value.toFixed(decimals);
}

/** The smallest and largest finite x (or y) over all the series, or undefined when there is none. */
export function extent(series: Series[], axis: "x" | "y"): [number, number] | undefined {
  let lo = Infinity;
  let hi = -Infinity;
  for (const s of series) {
    for (const p of s.points) {
      const v = p[axis];
      if (!Number.isFinite(v)) continue;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
  }
  return lo <= hi ? [lo, hi] : undefined;
}

/** SVG path data through the points ("M x y L x y …"), skipping non-finite ones. */
export function pathData(points: Point[], sx: (v: number) => number, sy: (v: number) => number): string {
  const parts: string[] = [];
  for (const p of points) {
    if (!Number.isFinite(p.x) || !Number.isFinite(p.y)) continue;
    parts.push(`${parts.length ? "L" : "M"}${sx(p.x).toFixed(1)} ${sy(p.y).toFixed(1)}`);
  }
  return parts.join(" ");
}

/** Lays out a chart of the series: axes' ticks and each series' path and dots. */
export function layoutChart(series: Series[], opts: LayoutOptions): ChartLayout {
  const m = opts.margin ?? { left: 44, top: 10, right: 12, bottom: 26 };
  const plot = { left: m.left, top: m.top, right: opts.width - m.right, bottom: opts.height - m.bottom };
  const xCount = opts.xTickCount ?? 6;
  const yCount = opts.yTickCount ?? 5;
  const xData = extent(series, "x") ?? [0, 1];
  // The x axis starts at 0 or 1 (steps and epochs count from 1) and ends at the data.
  const xDomain: [number, number] = opts.xDomain ?? [Math.min(xData[0], xData[0] >= 1 ? 1 : 0), Math.max(xData[1], 1)];
  const yData = extent(series, "y");
  const yDomain: [number, number] = opts.yDomain ?? (yData ? niceDomain(Math.min(0, yData[0]), yData[1], yCount) : [0, 1]);
  const sx = linearScale(xDomain, [plot.left, plot.right]);
  const sy = linearScale(yDomain, [plot.bottom, plot.top]);
  const xStep = Math.max(1, tickStep(xDomain[0], xDomain[1], xCount));
  const yStep = tickStep(yDomain[0], yDomain[1], yCount);
  const xTicks = niceTicks(xDomain[0], xDomain[1], xCount)
    .filter((v) => Number.isInteger(v))
    .map((value) => ({ value, pos: sx(value), label: tickLabel(value, xStep) }));
  const yTicks = niceTicks(yDomain[0], yDomain[1], yCount).map((value) => ({ value, pos: sy(value), label: tickLabel(value, yStep) }));
  const lines = series.map((s) => ({
    name: s.name,
    color: s.color,
    d: pathData(s.points, sx, sy),
    dots: s.points
      .filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y))
      .map((p): [number, number] => [Number(sx(p.x).toFixed(1)), Number(sy(p.y).toFixed(1))]),
  }));
  return { width: opts.width, height: opts.height, plot, xTicks, yTicks, lines };
}
