import { render, screen } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";
import { tokenStore } from "./api/client";
import { AuthProvider, RoleGate, roleIncludes } from "./auth";

afterEach(() => {
  tokenStore.clear();
  vi.unstubAllGlobals();
});

describe("roles in the UI", () => {
  it("ranks viewer < analyst < admin", () => {
    expect(roleIncludes("admin", "analyst")).toBe(true);
    expect(roleIncludes("analyst", "analyst")).toBe(true);
    expect(roleIncludes("viewer", "analyst")).toBe(false);
    expect(roleIncludes(null, "viewer")).toBe(false);
  });

  it("hides analyst actions from a signed-in viewer", async () => {
    tokenStore.set({ access_token: "t", refresh_token: "r", token_type: "bearer", expires_in: 900, refresh_expires_in: 3600 });
    vi.stubGlobal(
      "fetch",
      vi.fn(async () => new Response(JSON.stringify({ id: 1, username: "vic", full_name: "", role: "viewer", must_change_password: false }), { status: 200 })),
    );
    render(
      <AuthProvider>
        <RoleGate least="viewer">
          <span>read me</span>
        </RoleGate>
        <RoleGate least="analyst">
          <button type="button">Resolve</button>
        </RoleGate>
      </AuthProvider>,
    );
    expect(await screen.findByText("read me")).toBeTruthy();
    expect(screen.queryByRole("button", { name: "Resolve" })).toBeNull();
  });
});
