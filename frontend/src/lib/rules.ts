// Pure helpers of the rules page (filtering, plain-language results), kept apart so they can be tested.
import type { BacktestResult, RuleSummary, SampleRun } from "../api/types";

export interface RuleFilter {
  domain: string;
  kind: string;
  status: string;
  enabled: "" | "on" | "off";
  text: string;
}

export const NO_FILTER: RuleFilter = { domain: "", kind: "", status: "", enabled: "", text: "" };

/** Rules matching every set part of the filter (text: in the title, id, technique or typology). */
export function filterRules(rules: RuleSummary[], filter: RuleFilter): RuleSummary[] {
  const text = filter.text.trim().toLowerCase();
  return rules.filter(
    (r) =>
      (!filter.domain || r.domain === filter.domain) &&
      (!filter.kind || r.kind === filter.kind) &&
      (!filter.status || r.status === filter.status) &&
      (!filter.enabled || r.enabled === (filter.enabled === "on")) &&
      (!text ||
        [r.title, r.id, r.typology ?? "", ...r.attack].some((value) => value.toLowerCase().includes(text))),
  );
}

/** The distinct values of one field, sorted: the choices of a filter. */
export function choices(rules: RuleSummary[], field: "domain" | "kind" | "status"): string[] {
  return [...new Set(rules.map((r) => r[field]))].sort();
}

/** What the rule is about: ATT&CK techniques or the fraud typology. */
export function ruleTopic(rule: Pick<RuleSummary, "attack" | "typology">): string {
  if (rule.attack.length) return rule.attack.join(", ");
  return rule.typology ? rule.typology.replace(/_/g, " ") : "—";
}

/** One line about a sample run, e.g. "All 3 samples behave as expected." */
export function sampleVerdict(run: SampleRun): string {
  const failed = run.results.filter((r) => !r.passed).length;
  if (run.passed) return `All ${run.results.length} sample${run.results.length === 1 ? "" : "s"} behave as expected.`;
  if (failed === 0) return run.problems[0] ?? "The samples are incomplete.";
  return `${failed} of ${run.results.length} sample${run.results.length === 1 ? "" : "s"} did not behave as expected.`;
}

function percent(value: number | null): string {
  return value === null ? "" : `${Math.round(value * 100)}%`;
}

/** A backtest's result in plain words. */
export function backtestSentence(result: BacktestResult): string {
  const events = Object.values(result.events).reduce((a, b) => a + b, 0);
  if (events === 0) return "No stored events in that period: nothing to replay.";
  const hits = `${result.hits.toLocaleString("en-GB")} time${result.hits === 1 ? "" : "s"}`;
  let text = `Replayed over ${events.toLocaleString("en-GB")} events, the rule would have fired ${hits}.`;
  if (result.precision !== null) {
    text += ` ${percent(result.precision)} of its labelled hits were real attacks or fraud (${result.true_hits} of ${result.labelled_hits}).`;
  } else if (result.hits > 0) {
    text += " None of those events carries a verdict, so how many were right is unknown.";
  }
  if (result.recall !== null) {
    text += ` It caught ${percent(result.recall)} of the known bad events (${result.flagged_bad} of ${result.labelled_bad}).`;
  }
  return text;
}

/** A date input's value (YYYY-MM-DD) a number of days before `now`, in UTC. */
export function daysAgo(days: number, now: Date = new Date()): string {
  return new Date(now.getTime() - days * 86_400_000).toISOString().slice(0, 10);
}

/** The backtest body for two date inputs: from the start of `from` to the end of `to` (UTC days). */
export function backtestPeriod(from: string, to: string): { from: string; to: string } | null {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(from) || !/^\d{4}-\d{2}-\d{2}$/.test(to)) return null;
  const start = Date.parse(`${from}T00:00:00Z`);
  const end = Date.parse(`${to}T00:00:00Z`) + 86_400_000;
  if (!(end > start)) return null;
  return { from: new Date(start).toISOString(), to: new Date(end).toISOString() };
}
