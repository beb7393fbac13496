import { useEffect, useRef, useState } from "react";
import { Link, useNavigate } from "react-router-dom";
import { api } from "../api/client";
import type { Incident, Page } from "../api/types";
import { ErrorNote, Pager, SeverityBadge, StatusBadge, useLoader, useThrottled } from "../components/common";
import { RoleGate } from "../auth";
import { useLive, useLiveReopen } from "../live/LiveContext";
import { riskWord, timeAgo } from "../lib/format";

const STATUSES = ["", "new", "triaged", "investigating", "resolved"];
const SEVERITIES = ["", "critical", "high", "medium", "low"];
const DOMAINS = ["", "payment", "auth", "cloud", "network"];
const SIZE = 25;

export function IncidentsPage() {
  const navigate = useNavigate();
  const [status, setStatus] = useState("");
  const [severity, setSeverity] = useState("");
  const [domain, setDomain] = useState("");
  const [sort, setSort] = useState("-last_seen");
  const [page, setPage] = useState(1);
  const [selected, setSelected] = useState<Set<number>>(new Set());
  const [bulkStatus, setBulkStatus] = useState("triaged");
  const [bulkError, setBulkError] = useState<unknown>(null);
  const known = useRef<Set<number> | null>(null);
  const [fresh, setFresh] = useState<Set<number>>(new Set());

  const list = useLoader(
    () =>
      api<Page<Incident>>("/api/incidents", {
        params: { status, severity, domain, sort, page, size: SIZE },
      }),
    [status, severity, domain, sort, page],
  );
  const reload = useThrottled(() => void list.reload(), 1000);
  useLive("incidents", reload);
  useLiveReopen(() => void list.reload());

  useEffect(() => {
    if (!list.data) return;
    const ids = list.data.items.map((i) => i.id);
    if (known.current) {
      const prior = known.current;
      setFresh(new Set(ids.filter((id) => !prior.has(id))));
    }
    known.current = new Set([...(known.current ?? []), ...ids]);
  }, [list.data]);

  function toggleSort(column: string) {
    setSort((current) => (current === `-${column}` ? column : `-${column}`));
  }
  function toggle(id: number) {
    setSelected((old) => {
      const next = new Set(old);
      if (next.has(id)) next.delete(id);
      else next.add(id);
      return next;
    });
  }
  async function applyBulk() {
    setBulkError(null);
    try {
      await api("/api/incidents/bulk", {
        method: "POST",
        json: {
          incident_ids: [...selected],
          status: bulkStatus,
          disposition: bulkStatus === "resolved" ? "false_positive" : undefined,
        },
      });
      setSelected(new Set());
      await list.reload();
    } catch (err) {
      setBulkError(err);
    }
  }
  const sortMark = (column: string) => (sort === `-${column}` ? " ↓" : sort === column ? " ↑" : "");

  return (
    <>
      <h1>Incidents</h1>
      <div className="toolbar" role="search">
        <div className="field">
          <label htmlFor="f-status">Status</label>
          <select id="f-status" value={status} onChange={(e) => { setStatus(e.target.value); setPage(1); }}>
            {STATUSES.map((s) => <option key={s} value={s}>{s || "any"}</option>)}
          </select>
        </div>
        <div className="field">
          <label htmlFor="f-severity">Severity</label>
          <select id="f-severity" value={severity} onChange={(e) => { setSeverity(e.target.value); setPage(1); }}>
            {SEVERITIES.map((s) => <option key={s} value={s}>{s || "any"}</option>)}
          </select>
        </div>
        <div className="field">
          <label htmlFor="f-domain">Area</label>
          <select id="f-domain" value={domain} onChange={(e) => { setDomain(e.target.value); setPage(1); }}>
            {DOMAINS.map((s) => <option key={s} value={s}>{s || "any"}</option>)}
          </select>
        </div>
        <RoleGate least="analyst">
          <div className="field">
            <label htmlFor="bulk-status">With {selected.size} selected</label>
            <div className="actions">
              <select id="bulk-status" value={bulkStatus} onChange={(e) => setBulkStatus(e.target.value)}>
                <option value="triaged">mark triaged</option>
                <option value="investigating">mark investigating</option>
                <option value="resolved">resolve as false alarm</option>
              </select>
              <button type="button" disabled={selected.size === 0} onClick={() => void applyBulk()}>
                Apply
              </button>
            </div>
          </div>
        </RoleGate>
      </div>
      <ErrorNote error={list.error ?? bulkError} />
      <div className="card">
        <table data-testid="incidents-table">
          <thead>
            <tr>
              <RoleGate least="analyst"><th><span className="sr-only">Select</span></th></RoleGate>
              <th>#</th>
              <th>Severity</th>
              <th>What happened</th>
              <th>Areas</th>
              <th>Status</th>
              <th><button type="button" className="sort" onClick={() => toggleSort("risk")}>Risk{sortMark("risk")}</button></th>
              <th><button type="button" className="sort" onClick={() => toggleSort("last_seen")}>Last activity{sortMark("last_seen")}</button></th>
            </tr>
          </thead>
          <tbody>
            {list.data?.items.map((incident) => (
              <tr
                key={incident.id}
                className={`row-link${fresh.has(incident.id) ? " fresh" : ""}`}
                data-testid="incident-row"
                data-id={incident.id}
                onClick={() => navigate(`/incidents/${incident.id}`)}
              >
                <RoleGate least="analyst">
                  <td onClick={(e) => e.stopPropagation()}>
                    <input
                      type="checkbox"
                      aria-label={`Select incident ${incident.id}`}
                      checked={selected.has(incident.id)}
                      onChange={() => toggle(incident.id)}
                    />
                  </td>
                </RoleGate>
                <td className="muted">{incident.id}</td>
                <td><SeverityBadge severity={incident.severity} /></td>
                <td>
                  <Link to={`/incidents/${incident.id}`} onClick={(e) => e.stopPropagation()}>{incident.title}</Link>
                  <div className="muted">{incident.summary}</div>
                </td>
                <td className="muted">{incident.domains.join(", ")}</td>
                <td><StatusBadge status={incident.status} /></td>
                <td>{riskWord(incident.risk)}</td>
                <td className="muted">{timeAgo(incident.last_seen)}</td>
              </tr>
            ))}
          </tbody>
        </table>
        {list.data && list.data.items.length === 0 && <p className="muted">No incidents match these filters.</p>}
        {list.data && <Pager page={page} size={SIZE} total={list.data.total} onPage={setPage} />}
      </div>
    </>
  );
}
