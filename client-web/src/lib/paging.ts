// Reading a paged list (page_size / page_token / next_page_token) to its end. Pure.

export interface Page<T> {
  items: T[];
  nextPageToken: string;
}

/**
 * Calls `fetchPage` with "" and then each `next_page_token` until one is empty, and
 * returns every page's items in order. A token seen before (a service that loops) or
 * more than `maxPages` pages is an error rather than an endless loop.
 */
export async function allPages<T>(fetchPage: (pageToken: string) => Promise<Page<T>>, maxPages = 1000): Promise<T[]> {
  const items: T[] = [];
  const seen = new Set<string>();
  let token = "";
  for (let n = 0; ; n++) {
    if (n >= maxPages) throw new Error(`more than ${maxPages} pages`);
    const page = await fetchPage(token);
    items.push(...page.items);
    token = page.nextPageToken;
    if (!token) return items;
    if (seen.has(token)) throw new Error(`the page token ${JSON.stringify(token)} came back twice`);
    seen.add(token);
  }
}
