import { useState } from "react";
import { api } from "../api/client";
import type { Kpi } from "../api/types";
import { ErrorNote, useLoader } from "../components/common";
import { RoleGate } from "../auth";
import { useLive } from "../live/LiveContext";
import { formatLag, formatNumber, sum } from "../lib/format";

interface Health {
  status: string;
  version: string;
  database: { status: string; detail: string | null };
  schema_revision: string | null;
}

interface PipelineNote {
  ts: string;
  running: boolean;
  queue_depth: number;
  queue_capacity: number;
  errors: Record<string, number>;
  dead_letters: number;
  batches: number;
}

/** Health of the platform: database, pipeline throughput, delay, failures and set-aside records. */
export function SystemPage() {
  const health = useLoader(async () => {
    const response = await fetch("/api/health");
    return (await response.json()) as Health; // 503 still carries the body
  }, []);
  const [kpi, setKpi] = useState<Kpi | null>(null);
  const [pipeline, setPipeline] = useState<PipelineNote | null>(null);
  useLoader(async () => {
    const body = await api<{ kpi: Kpi }>("/api/overview");
    setKpi((old) => old ?? body.kpi);
    return null;
  }, []);
  useLive("kpi", (data) => setKpi(data as unknown as Kpi));
  useLive("system", (data) => setPipeline(data as unknown as PipelineNote));

  const errors = pipeline ? Object.entries(pipeline.errors) : [];
  return (
    <>
      <h1>System</h1>
      <ErrorNote error={health.error} />
      <div className="grid kpis">
        <div className="card kpi" data-testid="system-health">
          <div className="label">Platform</div>
          <div className="value">{health.data?.status === "ok" ? "Healthy" : health.data ? "Degraded" : "…"}</div>
          <div className="sub">
            version {health.data?.version ?? "—"} · database {health.data?.database.status ?? "—"}
            {health.data?.database.detail ? ` (${health.data.database.detail})` : ""}
          </div>
        </div>
        <div className="card kpi">
          <div className="label">Throughput</div>
          <div className="value">{kpi ? `${formatNumber(sum(kpi.events_per_s), 1)}/s` : "—"}</div>
          <div className="sub">{kpi ? `${formatNumber(sum(kpi.events_total))} events since start` : ""}</div>
        </div>
        <div className="card kpi">
          <div className="label">Delay from arrival to stored</div>
          <div className="value">{formatLag(kpi?.lag_p50_ms)}</div>
          <div className="sub">slowest 1%: {formatLag(kpi?.lag_p99_ms)}</div>
        </div>
        <div className="card kpi">
          <div className="label">Records set aside (dead letters)</div>
          <div className="value">{formatNumber(kpi?.dead_letters)}</div>
          <div className="sub">malformed input kept with the reason, never lost</div>
        </div>
      </div>
      <RoleGate least="admin">
        <div className="card">
          <h2>Pipeline (admins)</h2>
          {pipeline ? (
            <table>
              <tbody>
                <tr><th>Running</th><td>{pipeline.running ? "yes" : "no"}</td></tr>
                <tr><th>Queue</th><td>{pipeline.queue_depth} of {pipeline.queue_capacity} batches waiting</td></tr>
                <tr><th>Batches processed</th><td>{formatNumber(pipeline.batches)}</td></tr>
                <tr>
                  <th>Failures</th>
                  <td>{errors.length ? errors.map(([where, n]) => `${where}: ${n}`).join(" · ") : "none"}</td>
                </tr>
              </tbody>
            </table>
          ) : (
            <p className="muted">Waiting for the pipeline's first report…</p>
          )}
        </div>
      </RoleGate>
    </>
  );
}
