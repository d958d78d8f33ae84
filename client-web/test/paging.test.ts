import { describe, expect, it } from "vitest";
import { allPages } from "../src/lib/paging.js";

describe("paging", () => {
  it("reads every page in order", async () => {
    const pages: Record<string, { items: number[]; nextPageToken: string }> = {
      "": { items: [1, 2], nextPageToken: "p2" },
      p2: { items: [], nextPageToken: "p3" }, // a page can be empty while more follow
      p3: { items: [3], nextPageToken: "" },
    };
    const asked: string[] = [];
    const all = await allPages(async (token) => {
      asked.push(token);
      return pages[token];
    });
    expect(all).toEqual([1, 2, 3]);
    expect(asked).toEqual(["", "p2", "p3"]);
  });

  it("reads a single page once", async () => {
    let calls = 0;
    expect(await allPages(async () => (calls++, { items: ["a"], nextPageToken: "" }))).toEqual(["a"]);
    expect(calls).toBe(1);
  });

  it("refuses a token that loops, and too many pages", async () => {
    await expect(allPages(async (t) => ({ items: [t], nextPageToken: t === "" ? "a" : "a" }))).rejects.toThrow(/came back twice/);
    let n = 0;
    await expect(allPages(async () => ({ items: [], nextPageToken: `t${++n}` }), 5)).rejects.toThrow(/more than 5 pages/);
  });

  it("passes errors on", async () => {
    await expect(allPages(async () => Promise.reject(new Error("down")))).rejects.toThrow("down");
  });
});
