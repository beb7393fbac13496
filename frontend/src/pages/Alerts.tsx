import { useState } from "react";
import { Link, useSearchParams } from "react-router-dom";
import { api } from "../api/client";
import type { Alert, Page } from "../api/types";
import { ErrorNote, Pager, SeverityBadge, StatusBadge, useLoader, useThrottled } from "../components/common";
import { RoleGate } from "../auth";
import { useLive, useLiveReopen } from "../live/LiveContext";
import { entityWord, timeAgo } from "../lib/format";

const SIZE = 25;

export function AlertsPage() {
  const [status, setStatus] = useState("");
  const [severity, setSeverity] = useState("");
  const [domain, setDomain] = useState("");
  const [sort, setSort] = useState("-last_seen");
  const [page, setPage] = useState(1);
  const [actionError, setActionError] = useState<unknown>(null);
  const [params] = useSearchParams();
  const entityType = params.get("entity_type") ?? "";
  const entityId = params.get("entity_id") ?? "";
  const alertId = params.get("id") ?? "";
  const list = useLoader(async () => {
    if (alertId) {
      const one = await api<Alert>(`/api/alerts/${encodeURIComponent(alertId)}`);
      return { items: [one], total: 1, page: 1, size: SIZE };
    }
    return api<Page<Alert>>("/api/alerts", {
      params: { status, severity, domain, sort, page, size: SIZE, entity_type: entityType, entity_id: entityId },
    });
  }, [status, severity, domain, sort, page, entityType, entityId, alertId]);
  const reload = useThrottled(() => void list.reload(), 1000);
  useLive("alerts", reload);
  useLiveReopen(() => void list.reload());

  async function decide(alert: Alert, next: "acknowledged" | "closed") {
    setActionError(null);
    try {
      await api(`/api/alerts/${alert.id}`, { method: "PATCH", json: { status: next } });
      await list.reload();
    } catch (err) {
      setActionError(err);
    }
  }

  return (
    <>
      <h1>Alerts</h1>
      <div className="toolbar" role="search">
        <div className="field">
          <label htmlFor="a-status">Status</label>
          <select id="a-status" value={status} onChange={(e) => { setStatus(e.target.value); setPage(1); }}>
            {["", "new", "acknowledged", "closed"].map((s) => <option key={s} value={s}>{s || "any"}</option>)}
          </select>
        </div>
        <div className="field">
          <label htmlFor="a-severity">Severity</label>
          <select id="a-severity" value={severity} onChange={(e) => { setSeverity(e.target.value); setPage(1); }}>
            {["", "critical", "high", "medium", "low"].map((s) => <option key={s} value={s}>{s || "any"}</option>)}
          </select>
        </div>
        <div className="field">
          <label htmlFor="a-domain">Area</label>
          <select id="a-domain" value={domain} onChange={(e) => { setDomain(e.target.value); setPage(1); }}>
            {["", "payment", "auth", "cloud", "network"].map((s) => <option key={s} value={s}>{s || "any"}</option>)}
          </select>
        </div>
        <div className="field">
          <label htmlFor="a-sort">Order</label>
          <select id="a-sort" value={sort} onChange={(e) => setSort(e.target.value)}>
            <option value="-last_seen">latest activity first</option>
            <option value="-first_seen">newest first</option>
            <option value="-severity">most severe first</option>
            <option value="-count">most repeated first</option>
          </select>
        </div>
      </div>
      {alertId && (
        <p>
          Alert #{alertId} · <Link to="/alerts">show all</Link>
        </p>
      )}
      {entityId && (
        <p>
          Only alerts about {entityWord(entityType)} <strong>{entityId}</strong> · <Link to="/alerts">show all</Link>
        </p>
      )}
      <ErrorNote error={list.error ?? actionError} />
      <div className="card">
        <table data-testid="alerts-table">
          <thead>
            <tr>
              <th>Severity</th>
              <th>What the rule saw</th>
              <th>Who</th>
              <th>Times</th>
              <th>Status</th>
              <th>Last seen</th>
              <RoleGate least="analyst"><th>Decide</th></RoleGate>
            </tr>
          </thead>
          <tbody>
            {list.data?.items.map((alert) => (
              <tr key={alert.id} data-testid="alert-row">
                <td><SeverityBadge severity={alert.severity} /></td>
                <td>
                  {alert.title}
                  <div className="muted">{alert.description}</div>
                </td>
                <td>
                  {entityWord(alert.entity_type)}{" "}
                  {alert.entity_type && alert.entity_id ? (
                    <Link to={`/graph?type=${encodeURIComponent(alert.entity_type)}&id=${encodeURIComponent(alert.entity_id)}`}>
                      {alert.entity_id}
                    </Link>
                  ) : null}
                </td>
                <td>{alert.count}</td>
                <td><StatusBadge status={alert.status} /></td>
                <td className="muted">{timeAgo(alert.last_seen)}</td>
                <RoleGate least="analyst">
                  <td className="actions">
                    <button type="button" disabled={alert.status !== "new"} onClick={() => void decide(alert, "acknowledged")}>
                      Acknowledge
                    </button>
                    <button type="button" disabled={alert.status === "closed"} onClick={() => void decide(alert, "closed")}>
                      Close
                    </button>
                  </td>
                </RoleGate>
              </tr>
            ))}
          </tbody>
        </table>
        {list.data && list.data.items.length === 0 && <p className="muted">No alerts match these filters.</p>}
        {list.data && <Pager page={page} size={SIZE} total={list.data.total} onPage={setPage} />}
      </div>
    </>
  );
}
