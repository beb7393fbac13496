import { describe, expect, it } from "vitest";
import type { Kpi } from "../api/types";
import { appendSample } from "./Overview";

const sample = (ts: string): Kpi => ({
  ts,
  events_per_s: {},
  events_total: {},
  alerts_per_min: {},
  open_incidents: 0,
  lag_p50_ms: null,
  lag_p99_ms: null,
  queue_depth: 0,
  queue_capacity: 16,
  dead_letters: 0,
  pipeline_running: true,
});

describe("appendSample", () => {
  it("keeps the newest samples in order, ignoring late or repeated ones", () => {
    let series: Kpi[] = [];
    series = appendSample(series, sample("2026-11-24T10:00:00Z"), 2);
    series = appendSample(series, sample("2026-11-24T10:00:01Z"), 2);
    series = appendSample(series, sample("2026-11-24T10:00:01Z"), 2);
    series = appendSample(series, sample("2026-11-24T10:00:02Z"), 2);
    expect(series.map((s) => s.ts)).toEqual(["2026-11-24T10:00:01Z", "2026-11-24T10:00:02Z"]);
  });
});
