// A parser of the Prometheus / OpenMetrics text exposition (what the service's
// GET /metrics answers): the samples, each a name, its labels and a number. Comments
// (# HELP, # TYPE, # UNIT, # EOF) are skipped, and so are timestamps and exemplars after
// the value. Pure, no DOM.

export type Labels = Record<string, string>;

export interface Sample {
  /** The sample's name as written: a histogram's are NAME_bucket, NAME_sum, NAME_count. */
  name: string;
  labels: Labels;
  value: number;
}

/** A scrape's samples by name. */
export type Scrape = Map<string, Sample[]>;

/** The samples of an exposition, in order. A line that does not parse is skipped: one odd line should not blank the page. */
export function parseExposition(text: string): Sample[] {
  const out: Sample[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    const start = line.search(/\S/);
    if (start < 0 || line[start] === "#") continue;
    const sample = parseLine(line, start);
    if (sample) out.push(sample);
  }
  return out;
}

/** The samples of an exposition by name. */
export function parseScrape(text: string): Scrape {
  return indexByName(parseExposition(text));
}

export function indexByName(samples: Sample[]): Scrape {
  const byName: Scrape = new Map();
  for (const s of samples) {
    const list = byName.get(s.name);
    if (list) list.push(s);
    else byName.set(s.name, [s]);
  }
  return byName;
}

/**
 * A sample value or an `le` bound: a decimal or exponent number, "+Inf" / "Inf" /
 * "-Inf", "NaN" (any case). undefined for anything else (Number() would take "" as 0
 * and "0x10" as 16).
 */
export function parseNumber(text: string): number | undefined {
  const t = text.trim();
  if (/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(t)) return Number(t);
  const lower = t.toLowerCase();
  if (lower === "+inf" || lower === "inf") return Infinity;
  if (lower === "-inf") return -Infinity;
  if (lower === "nan") return NaN;
  return undefined;
}

const NAME_START = /[a-zA-Z_:]/;
const NAME_CHAR = /[a-zA-Z0-9_:]/;

function parseLine(line: string, start: number): Sample | undefined {
  let i = start;
  const isSpace = (c: string | undefined) => c === " " || c === "\t";
  const skipSpace = () => {
    while (isSpace(line[i])) i++;
  };
  const name = (): string | undefined => {
    if (line[i] === '"') return quoted();
    if (!NAME_START.test(line[i] ?? "")) return undefined;
    const from = i;
    while (i < line.length && NAME_CHAR.test(line[i])) i++;
    return line.slice(from, i);
  };
  // A quoted string with the exposition's escapes: \\, \" and \n.
  const quoted = (): string | undefined => {
    if (line[i] !== '"') return undefined;
    i++;
    let s = "";
    while (i < line.length) {
      const c = line[i++];
      if (c === '"') return s;
      if (c !== "\\") {
        s += c;
        continue;
      }
      const e = line[i++];
      if (e === undefined) return undefined;
      s += e === "n" ? "\n" : e; // \\ -> \, \" -> ", anything else as itself
    }
    return undefined; // unterminated
  };

  const metric = name();
  if (!metric) return undefined;
  const labels: Labels = {};
  skipSpace();
  if (line[i] === "{") {
    i++;
    for (;;) {
      skipSpace();
      if (line[i] === "}") {
        i++;
        break;
      }
      const key = name();
      if (key === undefined) return undefined;
      skipSpace();
      if (line[i] !== "=") return undefined;
      i++;
      skipSpace();
      const value = quoted();
      if (value === undefined) return undefined;
      labels[key] = value;
      skipSpace();
      if (line[i] === ",") i++;
      else if (line[i] !== "}") return undefined;
    }
    skipSpace();
  } else if (!isSpace(line[i - 1])) {
    return undefined; // the name must be followed by labels or a space
  }
  const from = i;
  while (i < line.length && !isSpace(line[i])) i++;
  const value = parseNumber(line.slice(from, i));
  if (value === undefined) return undefined;
  // What follows (a timestamp, "# {exemplar} …") is not needed.
  return { name: metric, labels, value };
}

/** A series' identity: its labels (all but `omit`) in name order, so that label order in the text does not matter. */
export function seriesKey(labels: Labels, omit: readonly string[] = []): string {
  const keys = Object.keys(labels)
    .filter((k) => !omit.includes(k))
    .sort();
  return JSON.stringify(keys.map((k) => [k, labels[k]]));
}

/** The samples of `name` whose labels have the given values (all of them when `match` is empty). */
export function select(scrape: Scrape, name: string, match: Labels = {}): Sample[] {
  const all = scrape.get(name) ?? [];
  const keys = Object.keys(match);
  if (keys.length === 0) return all;
  return all.filter((s) => keys.every((k) => s.labels[k] === match[k]));
}

/** The sum of the selected samples' values, or undefined when there is none. */
export function sumOf(scrape: Scrape, name: string, match: Labels = {}): number | undefined {
  const samples = select(scrape, name, match);
  if (samples.length === 0) return undefined;
  return samples.reduce((n, s) => n + s.value, 0);
}
