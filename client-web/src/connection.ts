// A banner in the header that says when a stream lost its connection and is retrying.
import type { WatchStatus } from "./lib/watch.js";
import { errorText, formatDuration } from "./lib/format.js";

export class ConnectionBanner {
  private lost = new Map<string, { attempt: number; delayMs: number; error: unknown; since: number }>();
  constructor(readonly el: HTMLElement) {
    el.hidden = true;
  }

  /** Reports a stream's status; `key` names the stream (e.g. "jobs table"). */
  report(key: string, status: WatchStatus) {
    if (status.kind === "connected") this.lost.delete(key);
    else this.lost.set(key, { ...status, since: Date.now() });
    this.render();
  }

  /** Forgets a stream (it ended or was abandoned). */
  clear(key: string) {
    this.lost.delete(key);
    this.render();
  }

  private render() {
    if (this.lost.size === 0) {
      this.el.hidden = true;
      this.el.textContent = "";
      return;
    }
    const parts = [...this.lost].map(
      ([key, s]) => `${key}: ${errorText(s.error)} — retrying in ${formatDuration(s.delayMs)} (attempt ${s.attempt})`,
    );
    this.el.textContent = `Connection lost. ${parts.join("; ")}`;
    this.el.hidden = false;
  }
}
