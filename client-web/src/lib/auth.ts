// API keys in the browser: the key kept for the tab (sessionStorage), the connect
// interceptor that sends it as `authorization: Bearer <secret>` on every call, and the
// readable texts of the service's UNAUTHENTICATED and PERMISSION_DENIED errors. Pure:
// the storage is injected, so this is testable without a browser.
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";

/** The sessionStorage item holding the key. */
export const STORAGE_ITEM = "deephardway.apiKey";

/** UNAUTHENTICATED without a key. */
export const SIGN_IN_TEXT = "Sign in with an API key";
/** UNAUTHENTICATED with a key: unknown, revoked or malformed. */
export const REFUSED_TEXT = "The API key was refused";
/** PERMISSION_DENIED: the key is valid but its role may not make the call. */
export const PERMISSION_TEXT = "Your key's role does not allow this";

/** What the key store needs of sessionStorage. */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/**
 * The API key of this tab. It lives in the given storage (sessionStorage in the
 * browser: never localStorage, the key must not outlive the tab); when the storage is
 * missing or refuses (storage disabled), in memory only.
 */
export class KeyStore {
  private memory: string | undefined;
  private listeners = new Set<(key: string | undefined) => void>();

  constructor(private storage?: StorageLike) {
    try {
      this.memory = normalizeKey(storage?.getItem(STORAGE_ITEM) ?? "");
    } catch {
      this.storage = undefined;
    }
  }

  /** The key, or undefined when signed out. */
  get(): string | undefined {
    return this.memory;
  }

  /** Signs in with a key (surrounding spaces and a pasted "Bearer " are dropped); an empty one signs out. */
  set(key: string) {
    const k = normalizeKey(key);
    if (!k) return this.clear();
    this.memory = k;
    try {
      this.storage?.setItem(STORAGE_ITEM, k);
    } catch {
      // Kept in memory only.
    }
    this.emit();
  }

  /** Signs out. */
  clear() {
    this.memory = undefined;
    try {
      this.storage?.removeItem(STORAGE_ITEM);
    } catch {
      // Nothing stored.
    }
    this.emit();
  }

  /** Calls `fn` after every sign-in and sign-out; returns the unsubscribe function. */
  subscribe(fn: (key: string | undefined) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private emit() {
    for (const fn of this.listeners) fn(this.memory);
  }
}

/** "  Bearer abc \n" -> "abc"; whitespace-only -> undefined. */
export function normalizeKey(text: string): string | undefined {
  const t = text.trim().replace(/^bearer\s+/i, "").trim();
  return t || undefined;
}

/** The errors that passed through the interceptor on a call that carried a key. */
const sentWithKey = new WeakSet<object>();

/** Whether the call that failed with `err` carried an API key. */
export function keyWasSent(err: unknown): boolean {
  return typeof err === "object" && err !== null && sentWithKey.has(err);
}

export interface AuthInterceptorOptions {
  /** The key to send, read at every call; none means no authorization header. */
  key(): string | undefined;
  /**
   * Called for every UNAUTHENTICATED or PERMISSION_DENIED error, of unary calls and of
   * streams (also one that ends with it after some messages), with the key the call
   * carried (undefined: none).
   */
  onAuthError?(err: ConnectError, key: string | undefined): void;
}

/**
 * The connect interceptor: `authorization: Bearer <key>` on every call when a key is
 * set (no header otherwise, for a service with auth off), and the auth errors reported.
 */
export function authInterceptor(opts: AuthInterceptorOptions): Interceptor {
  return (next) => async (req) => {
    const key = opts.key();
    if (key) req.header.set("authorization", `Bearer ${key}`);
    const seen = (err: unknown) => {
      if (key && typeof err === "object" && err !== null) sentWithKey.add(err);
      if (err instanceof ConnectError && isAuthCode(err.code)) opts.onAuthError?.(err, key);
    };
    let res;
    try {
      res = await next(req);
    } catch (err) {
      seen(err);
      throw err;
    }
    if (!res.stream) return res;
    const messages = res.message;
    async function* watched() {
      try {
        yield* messages;
      } catch (err) {
        seen(err);
        throw err;
      }
    }
    return { ...res, message: watched() };
  };
}

function isAuthCode(code: Code): boolean {
  return code === Code.Unauthenticated || code === Code.PermissionDenied;
}

/**
 * The readable text of an auth error, or undefined for any other error:
 * UNAUTHENTICATED -> "Sign in with an API key" (no key sent) or "The API key was
 * refused" (a key was sent); PERMISSION_DENIED -> "Your key's role does not allow this".
 * The code and the service's message follow in parentheses.
 */
export function authErrorText(err: unknown, keySent: boolean = keyWasSent(err)): string | undefined {
  if (!(err instanceof ConnectError)) return undefined;
  let text: string;
  let code: string;
  switch (err.code) {
    case Code.Unauthenticated:
      text = keySent ? REFUSED_TEXT : SIGN_IN_TEXT;
      code = "UNAUTHENTICATED";
      break;
    case Code.PermissionDenied:
      text = PERMISSION_TEXT;
      code = "PERMISSION_DENIED";
      break;
    default:
      return undefined;
  }
  return err.rawMessage ? `${text} (${code}: ${err.rawMessage})` : `${text} (${code})`;
}
