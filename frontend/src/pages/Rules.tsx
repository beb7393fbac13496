import { useMemo, useState } from "react";
import { api } from "../api/client";
import type { BacktestResult, RuleDetail, RuleSummary, SampleRun } from "../api/types";
import { ErrorNote, SeverityBadge, useLoader } from "../components/common";
import { RoleGate, roleIncludes, useAuth } from "../auth";
import { formatNumber, timeAgo } from "../lib/format";
import {
  backtestPeriod,
  backtestSentence,
  choices,
  daysAgo,
  filterRules,
  NO_FILTER,
  ruleTopic,
  sampleVerdict,
  type RuleFilter,
} from "../lib/rules";

const STATUS_WORDS: Record<string, string> = { stable: "Stable", test: "Being tested", experimental: "Experimental" };

/** One rule opened: what it looks for, what to check, its samples run on demand, and a backtest. */
function RulePanel({ ruleId, onClose }: { ruleId: string; onClose: () => void }) {
  const detail = useLoader(() => api<RuleDetail>(`/api/rules/${encodeURIComponent(ruleId)}`), [ruleId]);
  const [samples, setSamples] = useState<SampleRun | null>(null);
  const [backtest, setBacktest] = useState<BacktestResult | null>(null);
  const [from, setFrom] = useState(daysAgo(1));
  const [to, setTo] = useState(daysAgo(0));
  const [busy, setBusy] = useState<"" | "samples" | "backtest">("");
  const [error, setError] = useState<unknown>(null);
  const rule = detail.data;

  async function runSamples() {
    setBusy("samples");
    setError(null);
    try {
      setSamples(await api<SampleRun>(`/api/rules/${encodeURIComponent(ruleId)}/test`, { method: "POST" }));
    } catch (err) {
      setError(err);
    } finally {
      setBusy("");
    }
  }
  async function runBacktest() {
    const period = backtestPeriod(from, to);
    if (!period) {
      setError(new Error("Pick a start day on or before the end day."));
      return;
    }
    setBusy("backtest");
    setError(null);
    try {
      setBacktest(await api<BacktestResult>(`/api/rules/${encodeURIComponent(ruleId)}/backtest`, { method: "POST", json: period }));
    } catch (err) {
      setError(err);
    } finally {
      setBusy("");
    }
  }

  if (detail.error) return <ErrorNote error={detail.error} />;
  if (!rule) return <p className="muted">Loading the rule…</p>;
  return (
    <div className="card rule-panel" data-testid="rule-panel" aria-label={`Rule ${rule.title}`}>
      <div className="actions" style={{ justifyContent: "space-between" }}>
        <h2 style={{ margin: 0 }}>
          <SeverityBadge severity={rule.severity} /> {rule.title}
        </h2>
        <button type="button" onClick={onClose}>Close</button>
      </div>
      <p>{rule.description}</p>
      <p><strong>When it fires:</strong> {rule.triage}</p>
      <p className="muted">
        {rule.domain} · {rule.kind} rule · about {ruleTopic(rule)} · looks at {rule.entity}
        {rule.path ? ` · ${rule.path.split("/rules/").pop()}` : ""}
      </p>
      <ErrorNote error={error} />
      <RoleGate least="analyst">
        <div className="grid two">
          <div>
            <h2>Sample events</h2>
            <p className="muted">
              {rule.samples_positive.length} that should fire, {rule.samples_negative.length} that should not.
            </p>
            <button type="button" onClick={() => void runSamples()} disabled={busy !== ""}>
              {busy === "samples" ? "Running…" : "Run samples"}
            </button>
            {samples && (
              <div data-testid="sample-results" style={{ marginTop: 8 }}>
                <p className={samples.passed ? "pass" : "fail"}>{sampleVerdict(samples)}</p>
                <table>
                  <thead>
                    <tr><th>Sample</th><th>Should</th><th>Hits</th><th>Result</th></tr>
                  </thead>
                  <tbody>
                    {samples.results.map((r, i) => (
                      <tr key={`${r.kind}-${r.label}-${i}`}>
                        <td>{r.label}</td>
                        <td>{r.expected}</td>
                        <td>{r.hits}</td>
                        <td className={r.passed ? "pass" : "fail"}>{r.passed ? "as expected" : "wrong"}</td>
                      </tr>
                    ))}
                  </tbody>
                </table>
                {samples.problems.map((p) => <p key={p} className="fail">{p}</p>)}
              </div>
            )}
          </div>
          <div>
            <h2>Backtest over stored events</h2>
            <div className="toolbar">
              <div className="field">
                <label htmlFor="bt-from">From (UTC day)</label>
                <input id="bt-from" type="date" value={from} onChange={(e) => setFrom(e.target.value)} />
              </div>
              <div className="field">
                <label htmlFor="bt-to">To (UTC day)</label>
                <input id="bt-to" type="date" value={to} onChange={(e) => setTo(e.target.value)} />
              </div>
              <button type="button" onClick={() => void runBacktest()} disabled={busy !== ""}>
                {busy === "backtest" ? "Replaying…" : "Backtest"}
              </button>
            </div>
            <p className="muted">At most 7 days; the rule is replayed exactly as the live pipeline runs it.</p>
            {backtest && (
              <div data-testid="backtest-result">
                <p>{backtestSentence(backtest)}</p>
                {Object.keys(backtest.by_day).length > 0 && (
                  <p className="muted">
                    By day: {Object.entries(backtest.by_day).map(([day, n]) => `${day}: ${n}`).join(" · ")}
                  </p>
                )}
                {backtest.top_entities.length > 0 && (
                  <p className="muted">
                    Most hits: {backtest.top_entities.slice(0, 5).map(([id, n]) => `${id} (${n})`).join(", ")}
                  </p>
                )}
                <p className="muted">Took {formatNumber(backtest.elapsed_s, 1)} s.</p>
              </div>
            )}
          </div>
        </div>
      </RoleGate>
    </div>
  );
}

/** Detection rules: what runs, how often it fired, switch rules on or off (admins), test them. */
export function RulesPage() {
  const { user } = useAuth();
  const canSwitch = roleIncludes(user?.role, "admin");
  const list = useLoader(() => api<{ items: RuleSummary[]; total: number }>("/api/rules"), []);
  const [filter, setFilter] = useState<RuleFilter>(NO_FILTER);
  const [open, setOpen] = useState<string | null>(null);
  const [pending, setPending] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const rules = list.data?.items ?? [];
  const shown = useMemo(() => filterRules(rules, filter), [rules, filter]);
  const set = (part: Partial<RuleFilter>) => setFilter((f) => ({ ...f, ...part }));

  async function toggle(rule: RuleSummary) {
    setPending(rule.id);
    setError(null);
    try {
      const updated = await api<RuleSummary>(`/api/rules/${encodeURIComponent(rule.id)}`, {
        method: "PATCH",
        json: { enabled: !rule.enabled },
      });
      list.setData({
        items: rules.map((r) => (r.id === rule.id ? { ...r, enabled: updated.enabled, updated_by: updated.updated_by, updated_at: updated.updated_at } : r)),
        total: list.data?.total ?? rules.length,
      });
    } catch (err) {
      setError(err);
    } finally {
      setPending(null);
    }
  }

  const off = rules.filter((r) => !r.enabled).length;
  return (
    <>
      <h1>Detection rules</h1>
      <p className="muted">
        {rules.length} rules, {off === 0 ? "all running" : `${off} switched off`}. Switching a rule off takes effect in the
        live pipeline at once{canSwitch ? "" : " (admins only)"}.
      </p>
      <div className="toolbar" role="search">
        <div className="field">
          <label htmlFor="r-text">Find</label>
          <input id="r-text" placeholder="title, technique, typology" value={filter.text} onChange={(e) => set({ text: e.target.value })} />
        </div>
        {(["domain", "kind", "status"] as const).map((field) => (
          <div className="field" key={field}>
            <label htmlFor={`r-${field}`}>{{ domain: "Area", kind: "Kind", status: "Maturity" }[field]}</label>
            <select id={`r-${field}`} value={filter[field]} onChange={(e) => set({ [field]: e.target.value })}>
              <option value="">any</option>
              {choices(rules, field).map((v) => <option key={v} value={v}>{field === "status" ? STATUS_WORDS[v] ?? v : v}</option>)}
            </select>
          </div>
        ))}
        <div className="field">
          <label htmlFor="r-enabled">Running</label>
          <select id="r-enabled" value={filter.enabled} onChange={(e) => set({ enabled: e.target.value as RuleFilter["enabled"] })}>
            <option value="">any</option>
            <option value="on">on</option>
            <option value="off">off</option>
          </select>
        </div>
      </div>
      <ErrorNote error={list.error ?? error} />
      {open && <RulePanel ruleId={open} onClose={() => setOpen(null)} />}
      <div className="card" style={{ marginTop: 12 }}>
        <table data-testid="rules-table">
          <thead>
            <tr>
              <th>Rule</th><th>Area</th><th>Kind</th><th>Severity</th><th>About</th><th>Maturity</th><th>Hits (24 h)</th><th>Running</th>
            </tr>
          </thead>
          <tbody>
            {shown.map((rule) => (
              <tr key={rule.id} data-testid="rule-row" data-id={rule.id} data-enabled={rule.enabled}>
                <td>
                  <button type="button" className="link" onClick={() => setOpen(rule.id)} aria-label={`Open ${rule.title}`}>
                    {rule.title}
                  </button>
                </td>
                <td>{rule.domain}</td>
                <td>{rule.kind}</td>
                <td><SeverityBadge severity={rule.severity} /></td>
                <td>{ruleTopic(rule)}</td>
                <td>{STATUS_WORDS[rule.status] ?? rule.status}</td>
                <td>{formatNumber(rule.hits_24h)}</td>
                <td>
                  {canSwitch ? (
                    <label className="switch" title={rule.updated_by ? `changed by ${rule.updated_by} ${rule.updated_at ? timeAgo(rule.updated_at) : ""}` : undefined}>
                      <input
                        type="checkbox"
                        checked={rule.enabled}
                        disabled={pending === rule.id}
                        onChange={() => void toggle(rule)}
                        aria-label={`${rule.title} running`}
                        data-testid="rule-toggle"
                      />
                      {rule.enabled ? "on" : "off"}
                    </label>
                  ) : (
                    <span className={rule.enabled ? "pass" : "fail"}>{rule.enabled ? "on" : "off"}</span>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
        {list.data && shown.length === 0 && <p className="muted">No rule matches these filters.</p>}
        {!list.data && !list.error && <p className="muted">Loading…</p>}
      </div>
    </>
  );
}
