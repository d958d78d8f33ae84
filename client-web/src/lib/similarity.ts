// Similarity of embeddings. The service L2-normalises vectors, so the dot product is
// the cosine similarity; we still divide by the norms so unnormalised input works too.

export function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`vector lengths differ: ${a.length} vs ${b.length}`);
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

export function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const na = Math.sqrt(dot(a, a));
  const nb = Math.sqrt(dot(b, b));
  if (na === 0 || nb === 0) return 0;
  return dot(a, b) / (na * nb);
}

/** The n×n cosine similarity matrix of n vectors (symmetric, 1 on the diagonal). */
export function similarityMatrix(vectors: ArrayLike<number>[]): number[][] {
  const n = vectors.length;
  const m: number[][] = Array.from({ length: n }, () => new Array<number>(n).fill(0));
  for (let i = 0; i < n; i++) {
    for (let j = i; j < n; j++) {
      const c = i === j && dot(vectors[i], vectors[i]) > 0 ? 1 : cosine(vectors[i], vectors[j]);
      m[i][j] = c;
      m[j][i] = c;
    }
  }
  return m;
}

/**
 * Heat-map colour of a similarity in -1..1: white at 0 (and below, faded blue for
 * negatives) to a deep red at 1. Returns a CSS rgb() string.
 */
export function heatColor(value: number): string {
  const v = Math.max(-1, Math.min(1, Number.isFinite(value) ? value : 0));
  const lerp = (a: number, b: number, t: number) => Math.round(a + (b - a) * t);
  if (v >= 0) {
    // white (255,255,255) -> orange (253,174,97) -> red (178,24,43)
    if (v < 0.5) {
      const t = v / 0.5;
      return `rgb(${lerp(255, 253, t)}, ${lerp(255, 174, t)}, ${lerp(255, 97, t)})`;
    }
    const t = (v - 0.5) / 0.5;
    return `rgb(${lerp(253, 178, t)}, ${lerp(174, 24, t)}, ${lerp(97, 43, t)})`;
  }
  const t = -v;
  return `rgb(${lerp(255, 33, t)}, ${lerp(255, 102, t)}, ${lerp(255, 172, t)})`;
}

/** Text colour readable on heatColor(value). */
export function heatTextColor(value: number): string {
  return Math.abs(value) > 0.65 ? "#fff" : "#111";
}

/** Splits a textarea into sentences: one per line, trimmed, blank lines dropped. */
export function parseSentences(text: string): string[] {
  return text
    .split(/\r?\n/)
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}
