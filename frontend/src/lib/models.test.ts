import { describe, expect, it } from "vitest";
import type { RegisteredModel, RegisteredVersion } from "../api/types";
import { metricRows, promoteQuestion, rollbackTarget, stageWord } from "./models";

const version = (n: number, over: Partial<RegisteredVersion> = {}): RegisteredVersion => ({
  name: "payment_gbdt",
  version: n,
  kind: "gbdt",
  domain: "payment",
  stage: "candidate",
  live: false,
  metrics: {},
  threshold: 0.5,
  created_at: "2026-11-24T00:00:00Z",
  promoted_at: null,
  ...over,
});

const model = (versions: RegisteredVersion[]): RegisteredModel => ({
  name: "payment_gbdt",
  kind: "gbdt",
  domain: "payment",
  live_version: versions.find((v) => v.live)?.version ?? null,
  can_roll_back: true,
  versions,
});

describe("metricRows", () => {
  it("puts known measures first, in words, and skips what is not a number", () => {
    expect(metricRows({ zeta: 0.1, average_precision: 0.81234, roc_auc: 0.9, note: "x" })).toEqual([
      ["Average precision", "0.812"],
      ["ROC AUC", "0.900"],
      ["zeta", "0.100"],
    ]);
  });
  it("shows counts as whole numbers and leaves the threshold to its own column", () => {
    expect(metricRows({ n: 80000, positives: 78, threshold: 0.5, accuracy: 1 })).toEqual([
      ["Accuracy", "1.000"],
      ["Held-out events", "80,000"],
      ["of them bad", "78"],
    ]);
  });
  it("is empty without measurements", () => {
    expect(metricRows({})).toEqual([]);
  });
});

describe("rollbackTarget", () => {
  it("is the most recently promoted version that is not live", () => {
    const m = model([
      version(3, { live: true, stage: "production", promoted_at: "2026-11-24T03:00:00Z" }),
      version(2, { stage: "archived", promoted_at: "2026-11-24T01:00:00Z" }),
      version(1, { stage: "archived", promoted_at: "2026-11-24T02:00:00Z" }),
    ]);
    expect(rollbackTarget(m)?.version).toBe(1);
  });
  it("is null when nothing else was ever promoted", () => {
    expect(rollbackTarget(model([version(2), version(1, { live: true, promoted_at: "2026-11-24T00:00:00Z" })]))).toBeNull();
  });
});

describe("promoteQuestion and stageWord", () => {
  it("says what happens to the live version", () => {
    const m = model([version(2), version(1, { live: true, stage: "production" })]);
    expect(promoteQuestion(m, version(2))).toBe(
      "Serve payment_gbdt v2 for live scoring? v1 is served now and will be archived. The pipeline switches within seconds.",
    );
    expect(promoteQuestion(model([version(1)]), version(1))).toContain("Nothing is served for it now.");
  });
  it("names the stages plainly", () => {
    expect(stageWord(version(1, { live: true }))).toBe("Live");
    expect(stageWord(version(1))).toBe("Not served yet");
    expect(stageWord(version(1, { stage: "archived" }))).toBe("Retired");
  });
});
