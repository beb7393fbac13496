import { useMemo, useState } from "react";
import { Link, useNavigate } from "react-router-dom";
import { api } from "../api/client";
import type { Incident, Kpi, Overview } from "../api/types";
import { ErrorNote, SeverityBadge, StatusBadge, useLoader, useThrottled } from "../components/common";
import { LineChart } from "../components/LineChart";
import { useLive, useLiveReopen } from "../live/LiveContext";
import { formatLag, formatNumber, sum, timeAgo } from "../lib/format";

const DOMAINS: { key: string; label: string; color: string }[] = [
  { key: "payment", label: "Payments", color: "#38bdf8" },
  { key: "auth", label: "Sign-ins", color: "#a78bfa" },
  { key: "cloud", label: "Cloud", color: "#34d399" },
  { key: "network", label: "Network", color: "#fbbf24" },
];
const SEVERITIES: { key: string; color: string }[] = [
  { key: "critical", color: "#f43f5e" },
  { key: "high", color: "#fb923c" },
  { key: "medium", color: "#fbbf24" },
  { key: "low", color: "#60a5fa" },
];
const HISTORY = 300;

export function appendSample(series: Kpi[], sample: Kpi, max: number = HISTORY): Kpi[] {
  const last = series[series.length - 1];
  if (last && Date.parse(last.ts) >= Date.parse(sample.ts)) return series;
  const next = [...series, sample];
  return next.length > max ? next.slice(next.length - max) : next;
}

function KpiCard(props: { label: string; value: string; sub?: string; testId: string }) {
  return (
    <div className="card kpi" data-testid={props.testId}>
      <div className="label">{props.label}</div>
      <div className="value" data-testid={`${props.testId}-value`}>
        {props.value}
      </div>
      {props.sub && <div className="sub">{props.sub}</div>}
    </div>
  );
}

export function OverviewPage() {
  const navigate = useNavigate();
  const [series, setSeries] = useState<Kpi[]>([]);
  const [kpi, setKpi] = useState<Kpi | null>(null);
  const overview = useLoader(async () => {
    const body = await api<Overview>("/api/overview");
    setKpi(body.kpi);
    setSeries((old) => (old.length >= body.series.length ? old : body.series.slice(-HISTORY)));
    return body;
  }, []);
  const incidents = useLoader(async () => (await api<Overview>("/api/overview")).recent_incidents, []);
  const reloadIncidents = useThrottled(() => void incidents.reload(), 1000);

  useLive("kpi", (data) => {
    const sample = data as unknown as Kpi;
    setKpi(sample);
    setSeries((old) => appendSample(old, sample));
  });
  useLive("incidents", reloadIncidents);
  useLiveReopen(() => void overview.reload());

  const labels = useMemo(() => series.map((s) => new Date(s.ts).toLocaleTimeString("en-GB")), [series]);
  const eventSeries = useMemo(
    () => DOMAINS.map((d) => ({ label: d.label, color: d.color, values: series.map((s) => s.events_per_s[d.key] ?? 0) })),
    [series],
  );
  const alertSeries = useMemo(
    () =>
      SEVERITIES.map((s) => ({ label: s.key, color: s.color, values: series.map((k) => k.alerts_per_min[s.key] ?? 0) })),
    [series],
  );
  const recent: Incident[] = incidents.data ?? overview.data?.recent_incidents ?? [];
  const models = overview.data?.models ?? [];

  return (
    <>
      <h1>Overview</h1>
      <ErrorNote error={overview.error} />
      {kpi && (
        <div className="grid kpis">
          <KpiCard
            testId="kpi-events"
            label="Events per second"
            value={formatNumber(sum(kpi.events_per_s), 1)}
            sub={DOMAINS.map((d) => `${d.label} ${formatNumber(kpi.events_per_s[d.key] ?? 0, 0)}`).join(" · ")}
          />
          <KpiCard
            testId="kpi-total"
            label="Events processed"
            value={formatNumber(sum(kpi.events_total))}
            sub="since the platform started"
          />
          <KpiCard
            testId="kpi-alerts"
            label="Alerts in the last minute"
            value={formatNumber(sum(kpi.alerts_per_min))}
            sub={SEVERITIES.map((s) => `${s.key} ${kpi.alerts_per_min[s.key] ?? 0}`).join(" · ")}
          />
          <KpiCard testId="kpi-incidents" label="Open incidents" value={formatNumber(kpi.open_incidents)} />
          <KpiCard
            testId="kpi-lag"
            label="Pipeline delay"
            value={formatLag(kpi.lag_p50_ms)}
            sub={`slowest 1%: ${formatLag(kpi.lag_p99_ms)} · queue ${kpi.queue_depth}/${kpi.queue_capacity}`}
          />
          <KpiCard
            testId="kpi-dead"
            label="Records set aside"
            value={formatNumber(kpi.dead_letters)}
            sub={kpi.pipeline_running ? "pipeline running" : "no pipeline in this process"}
          />
        </div>
      )}
      <div className="grid two">
        <div className="card">
          <h2>Events per second</h2>
          <LineChart title="Events per second by domain" labels={labels} series={eventSeries} />
        </div>
        <div className="card">
          <h2>Alerts per minute</h2>
          <LineChart title="Alerts per minute by severity" labels={labels} series={alertSeries} />
        </div>
      </div>
      <div className="grid two" style={{ marginTop: 12 }}>
        <div className="card">
          <h2>Latest serious incidents</h2>
          {recent.length === 0 ? (
            <p className="muted">No open high or critical incidents right now.</p>
          ) : (
            <table data-testid="recent-incidents">
              <thead>
                <tr>
                  <th>Severity</th>
                  <th>What happened</th>
                  <th>Status</th>
                  <th>Last activity</th>
                </tr>
              </thead>
              <tbody>
                {recent.map((incident) => (
                  <tr key={incident.id} className="row-link" onClick={() => navigate(`/incidents/${incident.id}`)}>
                    <td>
                      <SeverityBadge severity={incident.severity} />
                    </td>
                    <td>
                      <Link to={`/incidents/${incident.id}`} onClick={(e) => e.stopPropagation()}>
                        {incident.title}
                      </Link>
                      <div className="muted">{incident.summary}</div>
                    </td>
                    <td>
                      <StatusBadge status={incident.status} />
                    </td>
                    <td className="muted">{timeAgo(incident.last_seen)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </div>
        <div className="card">
          <h2>Models in use</h2>
          {models.length === 0 ? (
            <p className="muted">No trained models registered yet: detection runs on rules alone.</p>
          ) : (
            <table>
              <tbody>
                {models.map((m) => (
                  <tr key={`${m.name}-${m.version}`}>
                    <td>{m.name}</td>
                    <td>v{m.version}</td>
                    <td className="muted">{m.status}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </div>
      </div>
    </>
  );
}
