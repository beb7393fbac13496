import { describe, expect, it } from "vitest";
import { entityWord, formatLag, riskWord, severityRank, statusWord, sum, timeAgo } from "./format";

describe("format", () => {
  it("says how long ago in plain words", () => {
    const now = Date.parse("2026-11-24T12:00:00Z");
    expect(timeAgo("2026-11-24T11:59:30Z", now)).toBe("30 s ago");
    expect(timeAgo("2026-11-24T11:20:00Z", now)).toBe("40 min ago");
    expect(timeAgo("2026-11-24T09:00:00Z", now)).toBe("3 h ago");
    expect(timeAgo("2026-11-01T09:00:00Z", now)).toBe("2026-11-01");
    expect(timeAgo("not a date", now)).toBe("—");
  });

  it("formats lag, risk, entities and statuses for people", () => {
    expect(formatLag(40.4)).toBe("40 ms");
    expect(formatLag(1234)).toBe("1.2 s");
    expect(formatLag(null)).toBe("—");
    expect(riskWord(0.9)).toBe("very high");
    expect(riskWord(0.1)).toBe("low");
    expect(entityWord("card_id")).toBe("Card");
    expect(entityWord("unknown_thing")).toBe("Entity");
    expect(statusWord("open")).toBe("New");
    expect(sum({ a: 1, b: 2.5 })).toBe(3.5);
    expect(["low", "critical", "high"].sort((a, b) => severityRank(a) - severityRank(b))).toEqual([
      "critical",
      "high",
      "low",
    ]);
  });
});
