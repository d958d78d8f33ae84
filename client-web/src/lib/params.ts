// Parsing of form parameters. Pure.

/**
 * A uint32 field as typed: empty, negative or junk is 0, fractions are dropped, and
 * values above the range are clamped to uint32, so that the service's validation
 * message (not the browser's) explains the limit.
 */
export function uintValue(text: string): number {
  const n = Number(text.trim() || "0");
  if (!Number.isFinite(n) || n < 0) return 0;
  return Math.min(0xffffffff, Math.floor(n));
}

/** A number field as typed: empty or junk is 0. */
export function numberValue(text: string): number {
  const n = Number(text.trim() || "0");
  return Number.isFinite(n) ? n : 0;
}

/** An optional uint64 seed: "12345" -> 12345n; empty -> undefined (the service picks one). */
export function parseSeed(text: string): bigint | undefined {
  const t = text.trim();
  if (t === "") return undefined;
  if (!/^\d+$/.test(t)) throw new Error(`seed: "${t}" is not a whole number`);
  const n = BigInt(t);
  if (n > 0xffffffffffffffffn) throw new Error(`seed: "${t}" is above 2^64 − 1`);
  return n;
}

/**
 * Stop strings from a comma-separated field. Spaces around entries are dropped;
 * `\n`, `\t`, `\,`, `\ ` and `\\` are escapes (escaped characters are never dropped).
 * Empty entries are dropped.
 */
export function parseStops(text: string): string[] {
  const out: string[] = [];
  let cur: { ch: string; escaped: boolean }[] = [];
  const flush = () => {
    let a = 0;
    let b = cur.length;
    while (a < b && !cur[a].escaped && cur[a].ch === " ") a++;
    while (b > a && !cur[b - 1].escaped && cur[b - 1].ch === " ") b--;
    const s = cur.slice(a, b).map((c) => c.ch).join("");
    if (s !== "") out.push(s);
    cur = [];
  };
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "\\" && i + 1 < text.length) {
      const n = text[++i];
      cur.push({ ch: n === "n" ? "\n" : n === "t" ? "\t" : n, escaped: true });
    } else if (c === ",") {
      flush();
    } else {
      cur.push({ ch: c, escaped: false });
    }
  }
  flush();
  return out;
}
