// The one way the dashboard talks to the API: bearer token, one shared refresh, plain-language errors.
import type { ApiErrorBody, TokenPair } from "./types";

const STORAGE_KEY = "finsecure.tokens";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

export interface StoredTokens {
  access: string;
  refresh: string;
  /** Epoch milliseconds when the access token stops working. */
  accessExpiresAt: number;
}

/** Token storage: this tab only (sessionStorage), so closing the tab signs out. */
export const tokenStore = {
  get(): StoredTokens | null {
    try {
      const raw = sessionStorage.getItem(STORAGE_KEY);
      return raw ? (JSON.parse(raw) as StoredTokens) : null;
    } catch {
      return null;
    }
  },
  set(pair: TokenPair, now: number = Date.now()): StoredTokens {
    const stored = {
      access: pair.access_token,
      refresh: pair.refresh_token,
      accessExpiresAt: now + pair.expires_in * 1000,
    };
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify(stored));
    return stored;
  },
  clear(): void {
    sessionStorage.removeItem(STORAGE_KEY);
  },
};

type Listener = () => void;
const signedOutListeners = new Set<Listener>();

/** Be told when the session ends for good (refresh refused); returns the unsubscribe function. */
export function onSignedOut(listener: Listener): () => void {
  signedOutListeners.add(listener);
  return () => signedOutListeners.delete(listener);
}

async function readError(response: Response): Promise<ApiError> {
  let code = "http_error";
  let message = `The server answered ${response.status}`;
  try {
    const body = (await response.json()) as Partial<ApiErrorBody>;
    if (body.error) {
      code = body.error.code;
      message = body.error.message;
    }
  } catch {
    // not JSON: keep the generic message
  }
  return new ApiError(response.status, code, message);
}

let refreshing: Promise<StoredTokens | null> | null = null;

/** Swap the refresh token for new tokens; concurrent callers share one request. */
export function refreshTokens(fetcher: typeof fetch = fetch): Promise<StoredTokens | null> {
  if (refreshing) return refreshing;
  const current = tokenStore.get();
  if (!current) return Promise.resolve(null);
  refreshing = (async () => {
    try {
      const response = await fetcher("/api/auth/refresh", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ refresh_token: current.refresh }),
      });
      if (!response.ok) {
        tokenStore.clear();
        signedOutListeners.forEach((l) => l());
        return null;
      }
      return tokenStore.set((await response.json()) as TokenPair);
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

/** A valid access token, refreshed first when it expires within 30 seconds. */
export async function accessToken(fetcher: typeof fetch = fetch): Promise<string | null> {
  const tokens = tokenStore.get();
  if (!tokens) return null;
  if (tokens.accessExpiresAt - Date.now() < 30_000) {
    return (await refreshTokens(fetcher))?.access ?? null;
  }
  return tokens.access;
}

export interface RequestOptions {
  method?: "GET" | "POST" | "PATCH" | "DELETE";
  json?: unknown;
  form?: Record<string, string>;
  params?: Record<string, string | number | boolean | null | undefined>;
  fetcher?: typeof fetch;
}

export function withParams(path: string, params?: RequestOptions["params"]): string {
  if (!params) return path;
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") query.set(key, String(value));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

/** Call the API; a 401 refreshes the token once and retries. Errors become {@link ApiError}. */
export async function api<T>(path: string, options: RequestOptions = {}): Promise<T> {
  const fetcher = options.fetcher ?? fetch;
  const send = async (token: string | null): Promise<Response> => {
    const headers: Record<string, string> = {};
    let body: BodyInit | undefined;
    if (options.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(options.json);
    } else if (options.form) {
      body = new URLSearchParams(options.form);
    }
    if (token) headers.Authorization = `Bearer ${token}`;
    return fetcher(withParams(path, options.params), {
      method: options.method ?? "GET",
      headers,
      body,
    });
  };
  let response = await send(await accessToken(fetcher));
  if (response.status === 401 && tokenStore.get()) {
    const renewed = await refreshTokens(fetcher);
    if (renewed) response = await send(renewed.access);
  }
  if (!response.ok) throw await readError(response);
  if (response.status === 204) return undefined as T;
  return (await response.json()) as T;
}
