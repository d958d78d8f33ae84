// Parsing of form parameters. Pure.

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
