import { afterEach, describe, expect, it, vi } from "vitest";
import { api, ApiError, onSignedOut, tokenStore, withParams } from "./client";

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
}

const pair = (access: string) => ({
  access_token: access,
  refresh_token: `refresh-${access}`,
  token_type: "bearer" as const,
  expires_in: 900,
  refresh_expires_in: 3600,
});

afterEach(() => tokenStore.clear());

describe("api client", () => {
  it("builds query strings without empty filters", () => {
    expect(withParams("/api/alerts", { status: "", severity: "high", page: 2, x: null })).toBe(
      "/api/alerts?severity=high&page=2",
    );
    expect(withParams("/api/alerts", {})).toBe("/api/alerts");
  });

  it("sends the bearer token and refreshes once on 401, sharing one refresh", async () => {
    tokenStore.set(pair("old"));
    const calls: string[] = [];
    const fetcher = vi.fn(async (url: RequestInfo | URL, init?: RequestInit) => {
      const auth = (init?.headers as Record<string, string> | undefined)?.Authorization ?? "";
      calls.push(`${String(url)} ${auth}`);
      if (String(url) === "/api/auth/refresh") return json(200, pair("new"));
      return auth === "Bearer new" ? json(200, { ok: true }) : json(401, { error: { code: "invalid_token", message: "expired", details: null } });
    });
    const [a, b] = await Promise.all([
      api<{ ok: boolean }>("/api/one", { fetcher: fetcher as typeof fetch }),
      api<{ ok: boolean }>("/api/two", { fetcher: fetcher as typeof fetch }),
    ]);
    expect(a.ok && b.ok).toBe(true);
    expect(calls.filter((c) => c.startsWith("/api/auth/refresh"))).toHaveLength(1);
    expect(tokenStore.get()?.access).toBe("new");
  });

  it("turns the API's error body into an ApiError and signs out when refresh is refused", async () => {
    tokenStore.set(pair("old"));
    let signedOut = false;
    const stop = onSignedOut(() => {
      signedOut = true;
    });
    const fetcher = vi.fn(async (url: RequestInfo | URL) =>
      String(url) === "/api/auth/refresh"
        ? json(401, { error: { code: "invalid_token", message: "Sign in again", details: null } })
        : json(401, { error: { code: "unauthorized", message: "Sign in first", details: null } }),
    );
    const error = await api("/api/x", { fetcher: fetcher as typeof fetch }).catch((e: unknown) => e);
    stop();
    expect(error).toBeInstanceOf(ApiError);
    expect((error as ApiError).message).toBe("Sign in first");
    expect(signedOut).toBe(true);
    expect(tokenStore.get()).toBeNull();
  });
});
