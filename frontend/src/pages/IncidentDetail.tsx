import { useState, type FormEvent } from "react";
import { Link, useNavigate, useParams } from "react-router-dom";
import { api, ApiError } from "../api/client";
import type { Alert, IncidentDetail, Note, TimelineEntry } from "../api/types";
import { AlertExplanation } from "../components/AlertExplanation";
import { BlockPanel, EntityPaths, SplitPanel } from "../components/IncidentTools";
import { ErrorNote, SeverityBadge, StatusBadge, useLoader, useThrottled } from "../components/common";
import { RoleGate, useAuth } from "../auth";
import { useLive } from "../live/LiveContext";
import { entityWord, riskWord, timeAgo } from "../lib/format";

const NEXT_STATUSES = ["new", "triaged", "investigating", "resolved"];
const DISPOSITIONS: Record<string, string> = {
  true_positive: "Real attack or fraud",
  false_positive: "False alarm",
  benign: "Harmless (expected activity)",
};

async function optional<T>(load: () => Promise<T>): Promise<T | null> {
  try {
    return await load();
  } catch (err) {
    if (err instanceof ApiError && (err.status === 404 || err.status === 405)) return null;
    throw err;
  }
}

/** The explanation of one alert in plain words: the rule's reason, then the strongest signals. */
export function explanationLines(alert: Alert): string[] {
  const e = alert.explanation ?? {};
  const lines: string[] = [];
  if (typeof e.text === "string" && e.text) lines.push(e.text);
  if (typeof e.latest === "string" && e.latest && e.latest !== e.text) lines.push(`Latest: ${e.latest}`);
  const contributions = (e.contributions ?? e.features) as unknown;
  if (Array.isArray(contributions)) {
    for (const item of contributions.slice(0, 5)) {
      if (item && typeof item === "object") {
        const c = item as Record<string, unknown>;
        const words = c.text ?? c.description ?? c.name ?? c.feature;
        if (typeof words === "string") lines.push(`• ${words}`);
      }
    }
  }
  const entities = e.entities as Record<string, string[]> | undefined;
  if (entities && typeof entities === "object") {
    const parts = Object.entries(entities).map(([k, v]) => `${entityWord(k)} ${Array.isArray(v) ? v.join(", ") : ""}`);
    if (parts.length) lines.push(`Involved: ${parts.join("; ")}`);
  }
  return lines.length ? lines : [alert.description || alert.title];
}

export function IncidentDetailPage() {
  const { id } = useParams();
  const { user } = useAuth();
  const [error, setError] = useState<unknown>(null);
  const [disposition, setDisposition] = useState("true_positive");
  const [note, setNote] = useState("");
  const [mergeIds, setMergeIds] = useState("");
  const [labels, setLabels] = useState("");
  const [tool, setTool] = useState<"" | "split" | "block">("");
  const [notice, setNotice] = useState<{ text: string; link?: string } | null>(null);
  const navigate = useNavigate();

  const detail = useLoader(() => api<IncidentDetail>(`/api/incidents/${id}`), [id]);
  const timeline = useLoader(
    () => optional(() => api<{ items: TimelineEntry[] }>(`/api/incidents/${id}/timeline`)),
    [id],
  );
  const notes = useLoader(() => optional(() => api<{ items: Note[] }>(`/api/incidents/${id}/notes`)), [id]);
  const reload = useThrottled(() => {
    void detail.reload();
    void timeline.reload();
  }, 1000);
  useLive("incidents", (data) => {
    const ids = (data.incident_ids as number[] | undefined) ?? [];
    if (ids.length === 0 || ids.includes(Number(id))) reload();
  });

  async function change(body: Record<string, unknown>) {
    setError(null);
    try {
      const updated = await api<IncidentDetail>(`/api/incidents/${id}`, { method: "PATCH", json: body });
      detail.setData(updated);
      void timeline.reload();
    } catch (err) {
      setError(err);
    }
  }
  async function addNote(event: FormEvent) {
    event.preventDefault();
    setError(null);
    try {
      await api(`/api/incidents/${id}/notes`, { method: "POST", json: { text: note } });
      setNote("");
      void notes.reload();
      void timeline.reload();
    } catch (err) {
      setError(err);
    }
  }
  async function merge(event: FormEvent) {
    event.preventDefault();
    const ids = mergeIds.split(/[\s,]+/).map(Number).filter((n) => Number.isInteger(n) && n > 0);
    if (!ids.length) return;
    setError(null);
    try {
      detail.setData(await api<IncidentDetail>(`/api/incidents/${id}/merge`, { method: "POST", json: { incident_ids: ids } }));
      setMergeIds("");
      void timeline.reload();
    } catch (err) {
      setError(err);
    }
  }

  const incident = detail.data;
  if (detail.error) return <ErrorNote error={detail.error} />;
  if (!incident) return <p className="muted">Loading…</p>;
  const entries = timeline.data?.items ?? incident.timeline;
  const done = incident.status === "resolved" || incident.status === "closed";

  return (
    <>
      <p><Link to="/incidents">← All incidents</Link></p>
      <h1>
        <SeverityBadge severity={incident.severity} /> {incident.title}
      </h1>
      <p className="muted" data-testid="incident-summary">{incident.summary}</p>
      <div className="actions" style={{ marginBottom: 12 }}>
        <span data-testid="incident-status"><StatusBadge status={incident.status} /></span>
        {incident.disposition && <span className="badge status">{DISPOSITIONS[incident.disposition] ?? incident.disposition}</span>}
        <span className="muted">
          Risk {riskWord(incident.risk)} · areas {incident.domains.join(", ")} · started {timeAgo(incident.first_seen)} ·{" "}
          <span data-testid="incident-assignee">
            {incident.assignee_id ? (incident.assignee_id === user?.id ? "assigned to you" : `assigned to user #${incident.assignee_id}`) : "unassigned"}
          </span>
        </span>
      </div>
      <ErrorNote error={error} />
      <RoleGate least="analyst">
        <div className="card actions" style={{ marginBottom: 12 }} aria-label="Actions">
          {incident.assignee_id !== user?.id ? (
            <button type="button" className="primary" onClick={() => void change({ assignee_id: user?.id })}>
              Assign to me
            </button>
          ) : (
            <button type="button" onClick={() => void change({ unassign: true })}>Unassign</button>
          )}
          <label htmlFor="move-status" className="sr-only">Move to</label>
          <select
            id="move-status"
            value=""
            onChange={(e) => e.target.value && void change({ status: e.target.value })}
            disabled={done}
          >
            <option value="">Move to…</option>
            {NEXT_STATUSES.filter((s) => s !== "resolved" && s !== incident.status).map((s) => (
              <option key={s} value={s}>{s}</option>
            ))}
          </select>
          <label htmlFor="disposition" className="sr-only">What it was</label>
          <select id="disposition" value={disposition} onChange={(e) => setDisposition(e.target.value)}>
            {Object.entries(DISPOSITIONS).map(([k, v]) => <option key={k} value={k}>{v}</option>)}
          </select>
          <button type="button" className="danger" disabled={done} onClick={() => void change({ status: "resolved", disposition })}>
            Resolve
          </button>
          <form className="actions" onSubmit={(e) => { e.preventDefault(); void change({ labels: labels.split(",").map((s) => s.trim()).filter(Boolean) }); }}>
            <label htmlFor="labels" className="sr-only">Labels</label>
            <input id="labels" placeholder={incident.labels.join(", ") || "labels, comma separated"} value={labels} onChange={(e) => setLabels(e.target.value)} />
            <button type="submit">Set labels</button>
          </form>
          <form className="actions" onSubmit={(e) => void merge(e)}>
            <label htmlFor="merge" className="sr-only">Merge incidents</label>
            <input id="merge" placeholder="merge incident ids" value={mergeIds} onChange={(e) => setMergeIds(e.target.value)} size={16} />
            <button type="submit">Merge into this</button>
          </form>
          <button type="button" aria-expanded={tool === "split"} onClick={() => setTool(tool === "split" ? "" : "split")}>
            Split…
          </button>
          <button type="button" aria-expanded={tool === "block"} onClick={() => setTool(tool === "block" ? "" : "block")}>
            Block…
          </button>
        </div>
        {tool === "split" && (
          <div style={{ marginBottom: 12 }}>
            <SplitPanel
              incident={incident}
              onCancel={() => setTool("")}
              onDone={(created) => {
                setTool("");
                setNotice({ text: `Moved ${created.alerts.length} alert${created.alerts.length === 1 ? "" : "s"} into incident #${created.id}.`, link: `/incidents/${created.id}` });
                void detail.reload();
                void timeline.reload();
              }}
            />
          </div>
        )}
        {tool === "block" && (
          <div style={{ marginBottom: 12 }}>
            <BlockPanel
              incident={incident}
              onCancel={() => setTool("")}
              onDone={(text) => {
                setTool("");
                setNotice({ text });
                void timeline.reload();
              }}
            />
          </div>
        )}
      </RoleGate>
      {notice && (
        <p className="notice" role="status" data-testid="incident-notice">
          {notice.text}{" "}
          {notice.link && (
            <button type="button" className="link" onClick={() => { setNotice(null); navigate(notice.link ?? "/incidents"); }}>
              Open it
            </button>
          )}
        </p>
      )}
      <div className="grid two">
        <div className="card">
          <h2>Why this was raised</h2>
          {incident.alerts.map((alert) => (
            <div key={alert.id} style={{ marginBottom: 12 }} data-testid="explanation">
              <div>
                <SeverityBadge severity={alert.severity} /> <strong>{alert.title}</strong>{" "}
                <span className="muted">×{alert.count} · {alert.domain}</span>
              </div>
              <div className="explain">{explanationLines(alert).join("\n")}</div>
              <AlertExplanation alertId={alert.id} />
              {alert.entity_type && alert.entity_id && (
                <Link to={`/graph?type=${encodeURIComponent(alert.entity_type)}&id=${encodeURIComponent(alert.entity_id)}`}>
                  See {entityWord(alert.entity_type).toLowerCase()} {alert.entity_id} on the graph
                </Link>
              )}
            </div>
          ))}
          <EntityPaths alerts={incident.alerts} />
          {Object.keys(incident.evidence ?? {}).length > 0 && (
            <details>
              <summary>Evidence as recorded</summary>
              <pre className="explain muted">{JSON.stringify(incident.evidence, null, 2)}</pre>
            </details>
          )}
        </div>
        <div className="card">
          <h2>Timeline</h2>
          <ol className="timeline" data-testid="timeline">
            {entries.map((entry, index) => (
              <li key={`${entry.ts}-${index}`}>
                <div className="when">{new Date(entry.ts).toLocaleString("en-GB")}{entry.actor ? ` · ${entry.actor}` : ""}</div>
                {entry.text}
              </li>
            ))}
          </ol>
          {notes.data && (
            <>
              <h2 style={{ marginTop: 16 }}>Notes</h2>
              {notes.data.items.length === 0 && <p className="muted">No notes yet.</p>}
              {notes.data.items.map((n) => (
                <p key={n.id}><strong>{n.author}</strong> <span className="muted">{timeAgo(n.created_at)}</span><br />{n.text}</p>
              ))}
              <RoleGate least="analyst">
                <form onSubmit={(e) => void addNote(e)} className="actions">
                  <label htmlFor="note" className="sr-only">Note</label>
                  <textarea id="note" rows={2} style={{ flex: 1 }} value={note} onChange={(e) => setNote(e.target.value)} placeholder="What did you find?" />
                  <button type="submit" disabled={!note.trim()}>Add note</button>
                </form>
              </RoleGate>
            </>
          )}
        </div>
      </div>
    </>
  );
}
