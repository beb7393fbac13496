import { describe, expect, it } from "vitest";
import { backoffDelay } from "./backoff";

describe("backoffDelay", () => {
  it("doubles up to the cap and never goes below half of it", () => {
    const opts = { baseMs: 500, maxMs: 8000 };
    expect(backoffDelay(0, opts, () => 0)).toBe(250);
    expect(backoffDelay(0, opts, () => 1)).toBe(500);
    expect(backoffDelay(3, opts, () => 1)).toBe(4000);
    expect(backoffDelay(10, opts, () => 1)).toBe(8000);
    expect(backoffDelay(10, opts, () => 0)).toBe(4000);
  });

  it("stays finite for absurd attempt counts", () => {
    expect(backoffDelay(10_000, { baseMs: 500, maxMs: 30_000 }, () => 0.5)).toBe(22_500);
  });
});
