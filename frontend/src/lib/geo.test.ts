import { describe, expect, it } from "vitest";
import { arcPoints, riskColor, unwrapRing } from "./geo";

describe("geo", () => {
  it("draws an arc that starts and ends at the two places and bends away from the straight line", () => {
    const points = arcPoints([48.86, 2.35], [40.71, -74.0], 10);
    expect(points).toHaveLength(11);
    expect(points[0]).toEqual([48.86, 2.35]);
    expect(points[10]?.[0]).toBeCloseTo(40.71);
    expect(points[10]?.[1]).toBeCloseTo(-74.0);
    const middle = points[5] ?? [0, 0];
    const straight = [(48.86 + 40.71) / 2, (2.35 - 74.0) / 2];
    expect(Math.hypot(middle[0] - (straight[0] ?? 0), middle[1] - (straight[1] ?? 0))).toBeGreaterThan(1);
  });

  it("unwraps a ring crossing the 180° meridian", () => {
    const ring = [
      [179, 65],
      [-179, 66],
      [-178, 64],
      [179, 65],
    ];
    expect(unwrapRing(ring).map((p) => p[0])).toEqual([179, 181, 182, 179]);
    expect(unwrapRing([[10, 1], [20, 2]])).toEqual([[10, 1], [20, 2]]);
  });

  it("colours risk from calm to alarming", () => {
    expect(riskColor(0)).toBe("#38bdf8");
    expect(riskColor(0.95)).toBe("#f43f5e");
    expect(riskColor(Number.NaN)).toBe("#38bdf8");
  });
});
