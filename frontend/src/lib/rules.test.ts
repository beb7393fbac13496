import { describe, expect, it } from "vitest";
import type { BacktestResult, RuleSummary, SampleRun } from "../api/types";
import { backtestPeriod, backtestSentence, choices, daysAgo, filterRules, NO_FILTER, ruleTopic, sampleVerdict } from "./rules";

const rule = (over: Partial<RuleSummary>): RuleSummary => ({
  id: "r1",
  title: "Card used far from home",
  domain: "payment",
  kind: "match",
  severity: "high",
  status: "stable",
  attack: [],
  typology: "card_not_present",
  enabled: true,
  hits_24h: 0,
  updated_by: null,
  updated_at: null,
  ...over,
});

const RULES = [
  rule({}),
  rule({ id: "r2", title: "Password spraying", domain: "auth", kind: "threshold", attack: ["T1110.003"], typology: null }),
  rule({ id: "r3", title: "Odd cloud call", domain: "cloud", status: "test", enabled: false, attack: ["T1562.008"], typology: null }),
];

const backtest = (over: Partial<BacktestResult>): BacktestResult => ({
  rule_id: "r1",
  title: "t",
  start: "2026-11-24T00:00:00Z",
  end: "2026-11-25T00:00:00Z",
  events: { payment: 1200 },
  hits: 4,
  labelled_hits: 4,
  true_hits: 3,
  labelled_bad: 6,
  flagged_bad: 3,
  precision: 0.75,
  recall: 0.5,
  by_day: {},
  top_entities: [],
  elapsed_s: 1.2,
  ...over,
});

describe("filterRules", () => {
  it("keeps every rule without a filter", () => {
    expect(filterRules(RULES, NO_FILTER)).toHaveLength(3);
  });
  it("combines area, kind, maturity and running", () => {
    expect(filterRules(RULES, { ...NO_FILTER, domain: "auth" }).map((r) => r.id)).toEqual(["r2"]);
    expect(filterRules(RULES, { ...NO_FILTER, kind: "match", enabled: "off" }).map((r) => r.id)).toEqual(["r3"]);
    expect(filterRules(RULES, { ...NO_FILTER, status: "stable", enabled: "on" }).map((r) => r.id)).toEqual(["r1", "r2"]);
  });
  it("finds text in titles, techniques and typologies, ignoring case", () => {
    expect(filterRules(RULES, { ...NO_FILTER, text: "t1110" }).map((r) => r.id)).toEqual(["r2"]);
    expect(filterRules(RULES, { ...NO_FILTER, text: "NOT_PRESENT" }).map((r) => r.id)).toEqual(["r1"]);
    expect(filterRules(RULES, { ...NO_FILTER, text: "nothing like it" })).toEqual([]);
  });
});

describe("choices and ruleTopic", () => {
  it("lists distinct sorted values", () => {
    expect(choices(RULES, "domain")).toEqual(["auth", "cloud", "payment"]);
    expect(choices(RULES, "status")).toEqual(["stable", "test"]);
  });
  it("says techniques first, else the typology in words", () => {
    expect(ruleTopic(RULES[1] as RuleSummary)).toBe("T1110.003");
    expect(ruleTopic(RULES[0] as RuleSummary)).toBe("card not present");
    expect(ruleTopic({ attack: [], typology: null })).toBe("—");
  });
});

describe("sampleVerdict", () => {
  const result = (passed: boolean) => ({ kind: "positive" as const, label: "s", expected: "fires" as const, hits: passed ? 1 : 0, passed });
  it("says all is well", () => {
    const run: SampleRun = { rule_id: "r1", passed: true, results: [result(true), result(true)], problems: [] };
    expect(sampleVerdict(run)).toBe("All 2 samples behave as expected.");
  });
  it("counts the wrong ones", () => {
    const run: SampleRun = { rule_id: "r1", passed: false, results: [result(true), result(false)], problems: ["x"] };
    expect(sampleVerdict(run)).toBe("1 of 2 samples did not behave as expected.");
  });
  it("gives the first problem when every sample passed but the set is incomplete", () => {
    const run: SampleRun = { rule_id: "r1", passed: false, results: [result(true)], problems: ["samples.negative: needs at least one negative sample"] };
    expect(sampleVerdict(run)).toBe("samples.negative: needs at least one negative sample");
  });
});

describe("backtestSentence", () => {
  it("gives hits, precision and recall in words", () => {
    expect(backtestSentence(backtest({}))).toBe(
      "Replayed over 1,200 events, the rule would have fired 4 times. 75% of its labelled hits were real attacks or fraud (3 of 4). It caught 50% of the known bad events (3 of 6).",
    );
  });
  it("says when nothing was stored", () => {
    expect(backtestSentence(backtest({ events: {} }))).toBe("No stored events in that period: nothing to replay.");
  });
  it("says when hits carry no verdict", () => {
    const text = backtestSentence(backtest({ hits: 1, precision: null, recall: null, labelled_hits: 0 }));
    expect(text).toBe("Replayed over 1,200 events, the rule would have fired 1 time. None of those events carries a verdict, so how many were right is unknown.");
  });
});

describe("backtest periods", () => {
  it("covers whole UTC days, end day included", () => {
    expect(backtestPeriod("2026-11-24", "2026-11-24")).toEqual({ from: "2026-11-24T00:00:00.000Z", to: "2026-11-25T00:00:00.000Z" });
  });
  it("refuses a backwards or malformed period", () => {
    expect(backtestPeriod("2026-11-25", "2026-11-24")).toBeNull();
    expect(backtestPeriod("yesterday", "2026-11-24")).toBeNull();
  });
  it("counts days back in UTC", () => {
    expect(daysAgo(1, new Date("2026-11-25T01:00:00Z"))).toBe("2026-11-24");
  });
});
