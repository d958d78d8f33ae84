import { describe, expect, it } from "vitest";
import { cosine, dot, heatColor, heatTextColor, parseSentences, similarityMatrix } from "../src/lib/similarity.js";

describe("similarity", () => {
  it("computes dot products and cosines", () => {
    expect(dot([1, 2, 3], [4, 5, 6])).toBe(32);
    expect(cosine([1, 0], [0, 1])).toBe(0);
    expect(cosine([2, 0], [5, 0])).toBeCloseTo(1);
    expect(cosine([1, 0], [-1, 0])).toBeCloseTo(-1);
    expect(cosine([0, 0], [1, 0])).toBe(0);
    expect(() => dot([1], [1, 2])).toThrow();
  });

  it("builds a symmetric matrix with ones on the diagonal", () => {
    const s = Math.SQRT1_2;
    const m = similarityMatrix([new Float32Array([1, 0]), [s, s], [0, 1]]);
    expect(m).toHaveLength(3);
    for (let i = 0; i < 3; i++) {
      expect(m[i][i]).toBe(1);
      for (let j = 0; j < 3; j++) expect(m[i][j]).toBeCloseTo(m[j][i]);
    }
    expect(m[0][1]).toBeCloseTo(s);
    expect(m[0][2]).toBeCloseTo(0);
    expect(similarityMatrix([])).toEqual([]);
  });

  it("colours the heat map", () => {
    expect(heatColor(0)).toBe("rgb(255, 255, 255)");
    expect(heatColor(1)).toBe("rgb(178, 24, 43)");
    expect(heatColor(2)).toBe(heatColor(1));
    expect(heatColor(-1)).toBe("rgb(33, 102, 172)");
    expect(heatColor(NaN)).toBe(heatColor(0));
    expect(heatTextColor(0.9)).toBe("#fff");
    expect(heatTextColor(0.1)).toBe("#111");
  });

  it("splits sentences one per line", () => {
    expect(parseSentences(" a \n\n b\r\nc \n  ")).toEqual(["a", "b", "c"]);
    expect(parseSentences("")).toEqual([]);
  });
});
