// Pure helpers of the models page: which figures to show and how to say them.
import type { RegisteredModel, RegisteredVersion } from "../api/types";

const METRIC_WORDS: Record<string, string> = {
  average_precision: "Average precision",
  roc_auc: "ROC AUC",
  precision: "Precision",
  recall: "Recall",
  f1: "F1",
  precision_at_threshold: "Precision at threshold",
  recall_at_threshold: "Recall at threshold",
  alert_rate: "Share of events flagged",
  accuracy: "Accuracy",
  macro_f1: "Macro F1",
  n: "Held-out events",
  positives: "of them bad",
};
/** Shown elsewhere on the page (the alert threshold has its own column). */
const HIDDEN = new Set(["threshold"]);

/** Counts read as whole numbers; measures (0 to 1) with three decimals, even when exactly 1. */
const COUNTS = new Set(["n", "positives"]);

function formatMetric(key: string, value: number): string {
  return COUNTS.has(key) || (Number.isInteger(value) && value > 1) ? value.toLocaleString("en-GB") : value.toFixed(3);
}

/** The headline figures of a version, in a stable order, formatted; unknown numeric ones after. */
export function metricRows(metrics: Record<string, unknown>): [string, string][] {
  const known = Object.keys(METRIC_WORDS).filter((k) => typeof metrics[k] === "number");
  const others = Object.keys(metrics)
    .filter((k) => !(k in METRIC_WORDS) && !HIDDEN.has(k) && typeof metrics[k] === "number")
    .sort();
  return [...known, ...others].slice(0, 6).map((k) => [METRIC_WORDS[k] ?? k.replace(/_/g, " "), formatMetric(k, metrics[k] as number)]);
}

/** What promoting `version` would do, for the confirm dialog. */
export function promoteQuestion(model: RegisteredModel, version: RegisteredVersion): string {
  const now = model.live_version === null ? "Nothing is served for it now." : `v${model.live_version} is served now and will be archived.`;
  return `Serve ${model.name} v${version.version} for live scoring? ${now} The pipeline switches within seconds.`;
}

/** The version a rollback would go back to: the most recently promoted one that is not live. */
export function rollbackTarget(model: RegisteredModel): RegisteredVersion | null {
  const earlier = model.versions
    .filter((v) => !v.live && v.promoted_at)
    .sort((a, b) => Date.parse(b.promoted_at ?? "") - Date.parse(a.promoted_at ?? "") || b.version - a.version);
  return earlier[0] ?? null;
}

export function stageWord(version: RegisteredVersion): string {
  if (version.live) return "Live";
  return version.stage === "candidate" ? "Not served yet" : "Retired";
}
