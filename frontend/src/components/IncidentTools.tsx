// Incident detail tools: split alerts into a new incident, block an entity, and the graph path between
// the incident's key entities in plain words.
import { useEffect, useState, type FormEvent } from "react";
import { Link } from "react-router-dom";
import { api, ApiError } from "../api/client";
import type { Alert, GraphPath, IncidentDetail } from "../api/types";
import { entityName, keyEntities, pathPairs, pathSentence, type EntityRef } from "../lib/paths";
import { ConfirmDialog } from "./ConfirmDialog";
import { ErrorNote } from "./common";

export const BLOCKABLE = ["user_id", "account_id", "card_id", "device_id", "src_ip", "merchant_id", "terminal_id", "payee_id"];

export const BLOCK_TTLS: [string, number | null][] = [
  ["1 hour", 1],
  ["1 day", 24],
  ["1 week", 168],
  ["30 days", 720],
  ["until removed", null],
];

/** Choose alerts to move into a new incident; at least one alert stays. */
export function SplitPanel(props: { incident: IncidentDetail; onDone: (created: IncidentDetail) => void; onCancel: () => void }) {
  const [chosen, setChosen] = useState<Set<number>>(new Set());
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const all = props.incident.alerts;
  const tooMany = chosen.size >= all.length;

  async function submit(event: FormEvent) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const created = await api<IncidentDetail>(`/api/incidents/${props.incident.id}/split`, {
        method: "POST",
        json: { alert_ids: [...chosen] },
      });
      props.onDone(created);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }
  const flip = (id: number) =>
    setChosen((old) => {
      const next = new Set(old);
      if (next.has(id)) next.delete(id);
      else next.add(id);
      return next;
    });

  return (
    <form className="card" onSubmit={(e) => void submit(e)} data-testid="split-panel" aria-label="Split the incident">
      <h2>Move alerts into a new incident</h2>
      {all.length < 2 ? (
        <p className="muted">This incident has one alert: there is nothing to split off.</p>
      ) : (
        <fieldset style={{ border: "none", padding: 0, margin: 0 }}>
          <legend className="sr-only">Alerts to move</legend>
          {all.map((alert: Alert) => (
            <label key={alert.id} className="switch" style={{ display: "flex", marginBottom: 4 }}>
              <input type="checkbox" checked={chosen.has(alert.id)} onChange={() => flip(alert.id)} />
              #{alert.id} {alert.title} <span className="muted">({alert.domain}{alert.entity_id ? `, ${alert.entity_id}` : ""})</span>
            </label>
          ))}
        </fieldset>
      )}
      {tooMany && <p className="fail">Leave at least one alert in this incident.</p>}
      <ErrorNote error={error} />
      <div className="actions">
        <button type="submit" className="primary" disabled={busy || chosen.size === 0 || tooMany}>
          Move {chosen.size || ""} alert{chosen.size === 1 ? "" : "s"} to a new incident
        </button>
        <button type="button" onClick={props.onCancel}>Cancel</button>
      </div>
    </form>
  );
}

/** Block one of the incident's entities for a while, with a reason (confirmed first). */
export function BlockPanel(props: { incident: IncidentDetail; onDone: (text: string) => void; onCancel: () => void }) {
  const choices = keyEntities(props.incident.alerts, 8).filter((e) => BLOCKABLE.includes(e.type));
  const [target, setTarget] = useState(choices[0] ? `${choices[0].type}:${choices[0].id}` : "");
  const [ttl, setTtl] = useState("24");
  const [reason, setReason] = useState(`Incident #${props.incident.id}: ${props.incident.title}`.slice(0, 200));
  const [asking, setAsking] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [type, ...rest] = target.split(":");
  const ref: EntityRef | null = type && rest.length ? { type, id: rest.join(":") } : null;
  const ttlWords = BLOCK_TTLS.find(([, hours]) => String(hours) === ttl)?.[0] ?? `${ttl} hours`;

  async function block() {
    if (!ref) return;
    setBusy(true);
    setError(null);
    try {
      await api("/api/blocklist", {
        method: "POST",
        json: { entity_type: ref.type, entity_id: ref.id, reason, ttl_hours: ttl === "null" ? null : Number(ttl) },
      });
      props.onDone(`Blocked ${entityName(ref)} for ${ttlWords}.`);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
      setAsking(false);
    }
  }

  return (
    <form
      className="card"
      data-testid="block-panel"
      aria-label="Block an entity"
      onSubmit={(e) => {
        e.preventDefault();
        setAsking(true);
      }}
    >
      <h2>Block an entity of this incident</h2>
      {choices.length === 0 ? (
        <p className="muted">No entity of this incident can be blocked.</p>
      ) : (
        <div className="toolbar">
          <div className="field">
            <label htmlFor="block-entity">Entity</label>
            <select id="block-entity" value={target} onChange={(e) => setTarget(e.target.value)}>
              {choices.map((e) => (
                <option key={`${e.type}:${e.id}`} value={`${e.type}:${e.id}`}>{entityName(e)}</option>
              ))}
            </select>
          </div>
          <div className="field">
            <label htmlFor="block-ttl">For</label>
            <select id="block-ttl" value={ttl} onChange={(e) => setTtl(e.target.value)}>
              {BLOCK_TTLS.map(([words, hours]) => <option key={words} value={String(hours)}>{words}</option>)}
            </select>
          </div>
          <div className="field" style={{ flex: 1, minWidth: 240 }}>
            <label htmlFor="block-reason">Reason</label>
            <input id="block-reason" value={reason} onChange={(e) => setReason(e.target.value)} />
          </div>
        </div>
      )}
      <ErrorNote error={error} />
      <div className="actions">
        <button type="submit" className="danger" disabled={!ref || reason.trim().length < 3 || busy}>Block</button>
        <button type="button" onClick={props.onCancel}>Cancel</button>
      </div>
      {asking && ref && (
        <ConfirmDialog
          title="Block this entity?"
          message={`Block ${entityName(ref)} for ${ttlWords}? Its new events are marked as blocked and enforcement points refuse it.`}
          confirmLabel="Block"
          danger
          busy={busy}
          onConfirm={() => void block()}
          onCancel={() => setAsking(false)}
        />
      )}
    </form>
  );
}

interface PathLine {
  key: string;
  text: string;
  found: boolean;
}

/** How the incident's key entities are linked in the entity graph, one sentence per pair. */
export function EntityPaths({ alerts }: { alerts: Alert[] }) {
  const entities = keyEntities(alerts);
  const pairs = pathPairs(entities);
  const signature = pairs.map(([a, b]) => `${a.type}:${a.id}>${b.type}:${b.id}`).join("|");
  const [lines, setLines] = useState<PathLine[] | null>(null);
  const [unavailable, setUnavailable] = useState(false);

  useEffect(() => {
    let live = true;
    void (async () => {
      const out: PathLine[] = [];
      for (const [a, b] of pairs) {
        try {
          const path = await api<GraphPath>("/api/graph/path", { params: { from: `${a.type}:${a.id}`, to: `${b.type}:${b.id}` } });
          out.push({ key: `${a.id}>${b.id}`, text: pathSentence(path), found: path.found });
        } catch (err) {
          if (err instanceof ApiError && err.status === 503) {
            if (live) setUnavailable(true);
            break;
          }
          // 404: one of them has left the graph's time window; say nothing about that pair
        }
      }
      if (live) setLines(out);
    })();
    return () => {
      live = false;
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [signature]);

  if (pairs.length === 0) return null;
  return (
    <div data-testid="graph-paths" style={{ marginTop: 12 }}>
      <h2>How the entities are linked</h2>
      {unavailable && <p className="muted">The entity graph is not available in this process.</p>}
      {!unavailable && lines === null && <p className="muted">Looking for links…</p>}
      {lines?.length === 0 && !unavailable && <p className="muted">These entities are no longer in the graph's recent window.</p>}
      {lines?.map((line) => (
        <p key={line.key} className={`path-line${line.found ? "" : " muted"}`} data-testid="graph-path">
          {line.text}
        </p>
      ))}
      {entities[0] && (
        <Link to={`/graph?type=${encodeURIComponent(entities[0].type)}&id=${encodeURIComponent(entities[0].id)}`}>
          Open {entityName(entities[0])} in the graph explorer
        </Link>
      )}
    </div>
  );
}
