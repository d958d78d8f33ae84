import { describe, expect, it } from "vitest";
import { extent, layoutChart, linearScale, niceDomain, niceTicks, pathData, tickLabel, tickStep } from "../src/lib/chart.js";

describe("chart", () => {
  it("maps linearly, and a flat domain to the middle", () => {
    const s = linearScale([0, 10], [100, 0]);
    expect(s(0)).toBe(100);
    expect(s(10)).toBe(0);
    expect(s(2.5)).toBe(75);
    expect(linearScale([3, 3], [0, 50])(3)).toBe(25);
  });

  it("picks 1-2-5 tick steps and ticks inside the range", () => {
    expect(tickStep(0, 1, 5)).toBe(0.2);
    expect(tickStep(0, 100, 5)).toBe(20);
    expect(tickStep(0, 141, 6)).toBe(20);
    expect(tickStep(0, 2.35, 5)).toBe(0.5);
    expect(tickStep(5, 5, 5)).toBe(1);
    expect(niceTicks(0, 1, 5)).toEqual([0, 0.2, 0.4, 0.6, 0.8, 1]);
    expect(niceTicks(1, 141, 6)).toEqual([20, 40, 60, 80, 100, 120, 140]);
    expect(niceTicks(4, 4)).toEqual([4]);
    expect(niceTicks(1, 0, 5)).toEqual([0, 0.2, 0.4, 0.6, 0.8, 1]);
    expect(niceTicks(NaN, 1)).toEqual([]);
  });

  it("widens domains to tick multiples", () => {
    expect(niceDomain(0, 2.3548, 5)).toEqual([0, 2.5]);
    expect(niceDomain(0.24, 0.9, 5)).toEqual([0.2, 0.9]);
    expect(niceDomain(0.24, 0.93, 5)).toEqual([0.2, 1]);
    expect(niceDomain(2, 2)).toEqual([1.8, 2.2]);
    expect(niceDomain(0, 0)).toEqual([-1, 1]);
  });

  it("labels ticks", () => {
    expect(tickLabel(20, 20)).toBe("20");
    expect(tickLabel(0.4, 0.2)).toBe("0.4");
    expect(tickLabel(0.25, 0.05)).toBe("0.25");
    expect(tickLabel(25000, 5000)).toBe("25k");
  });

  it("finds extents over series, ignoring non-finite values", () => {
    const series = [
      { name: "a", color: "red", points: [{ x: 1, y: 2 }, { x: 3, y: NaN }] },
      { name: "b", color: "blue", points: [{ x: 2, y: -1 }] },
    ];
    expect(extent(series, "x")).toEqual([1, 3]);
    expect(extent(series, "y")).toEqual([-1, 2]);
    expect(extent([{ name: "c", color: "", points: [] }], "x")).toBeUndefined();
  });

  it("builds path data", () => {
    const id = (v: number) => v;
    expect(pathData([{ x: 1, y: 2 }, { x: 3, y: Infinity }, { x: 4, y: 5 }], id, id)).toBe("M1.0 2.0 L4.0 5.0");
    expect(pathData([], id, id)).toBe("");
  });

  it("lays out a chart with a fixed y domain", () => {
    const layout = layoutChart(
      [{ name: "acc", color: "green", points: [{ x: 1, y: 0 }, { x: 11, y: 1 }] }],
      { width: 200, height: 120, margin: { left: 20, top: 10, right: 10, bottom: 10 }, yDomain: [0, 1] },
    );
    expect(layout.plot).toEqual({ left: 20, top: 10, right: 190, bottom: 110 });
    const line = layout.lines[0];
    expect(line.dots).toEqual([
      [20, 110],
      [190, 10],
    ]);
    expect(line.d).toBe("M20.0 110.0 L190.0 10.0");
    expect(layout.yTicks.map((t) => t.label)).toEqual(["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
    expect(layout.yTicks[0].pos).toBe(110);
    expect(layout.xTicks.every((t) => Number.isInteger(t.value))).toBe(true);
  });

  it("keeps a fixed x domain (a time window ending now) whatever the points span", () => {
    const layout = layoutChart([{ name: "rate", color: "blue", points: [{ x: -10, y: 1 }, { x: 0, y: 2 }] }], {
      width: 330,
      height: 120,
      margin: { left: 20, top: 10, right: 10, bottom: 10 },
      xDomain: [-300, 0],
    });
    // 300 s over 300 px: x = 0 is the right edge, x = -10 ten pixels left of it.
    expect(layout.lines[0].dots.map(([x]) => x)).toEqual([310, 320]);
    expect(layout.xTicks.map((t) => t.label)).toEqual(["-300", "-250", "-200", "-150", "-100", "-50", "0"]);
    expect(layout.xTicks[0].pos).toBe(20);
  });

  it("lays out an empty chart and a single point without failing", () => {
    const empty = layoutChart([], { width: 100, height: 100 });
    expect(empty.lines).toEqual([]);
    expect(empty.yTicks.length).toBeGreaterThan(0);
    const one = layoutChart([{ name: "loss", color: "red", points: [{ x: 1, y: 2.35 }] }], { width: 100, height: 100 });
    expect(one.lines[0].dots).toHaveLength(1);
    const [x, y] = one.lines[0].dots[0];
    expect(Number.isFinite(x) && Number.isFinite(y)).toBe(true);
  });
});
