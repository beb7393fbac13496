import { useState } from "react";
import { api } from "../api/client";
import type { RegisteredModel, RegisteredVersion } from "../api/types";
import { ConfirmDialog } from "../components/ConfirmDialog";
import { ErrorNote, useLoader } from "../components/common";
import { roleIncludes, useAuth } from "../auth";
import { formatNumber, timeAgo } from "../lib/format";
import { metricRows, promoteQuestion, rollbackTarget, stageWord } from "../lib/models";

type Pending =
  | { kind: "promote"; model: RegisteredModel; version: RegisteredVersion }
  | { kind: "rollback"; model: RegisteredModel; target: RegisteredVersion };

const KIND_WORDS: Record<string, string> = {
  gbdt: "boosted decision trees (learns from labelled fraud)",
  iforest: "isolation forest (flags what is unusual)",
  hst: "half-space trees (flags what is unusual, learns online)",
  ensemble: "ensemble (weighs the others together)",
};

/** Model versions: quality figures, which one scores live, promote and roll back (admins). */
export function ModelsPage() {
  const { user } = useAuth();
  const canChange = roleIncludes(user?.role, "admin");
  const list = useLoader(() => api<{ items: RegisteredModel[]; total: number }>("/api/models"), []);
  const [pending, setPending] = useState<Pending | null>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [done, setDone] = useState<string | null>(null);

  async function confirm() {
    if (!pending) return;
    setBusy(true);
    setError(null);
    try {
      const { model } = pending;
      const url =
        pending.kind === "promote"
          ? `/api/models/${encodeURIComponent(model.name)}/${pending.version.version}/promote`
          : `/api/models/${encodeURIComponent(model.name)}/rollback`;
      const updated = await api<RegisteredModel>(url, { method: "POST" });
      list.setData({
        items: (list.data?.items ?? []).map((m) => (m.name === updated.name ? updated : m)),
        total: list.data?.total ?? 0,
      });
      setDone(`${updated.name} v${updated.live_version} is now live.`);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
      setPending(null);
    }
  }

  const models = list.data?.items ?? [];
  return (
    <>
      <h1>Models</h1>
      <p className="muted">
        Each model gives events a risk score. One version per model scores live; the pipeline picks up a change within seconds.
      </p>
      <ErrorNote error={list.error ?? error} />
      {done && <p className="notice" role="status">{done}</p>}
      {list.data && models.length === 0 && (
        <p className="notice">No model is registered yet. The first start trains one on simulated data; it appears here when done.</p>
      )}
      {!list.data && !list.error && <p className="muted">Loading…</p>}
      <div className="grid" data-testid="models">
        {models.map((model) => {
          const back = rollbackTarget(model);
          return (
            <div className="card" key={model.name} data-testid="model-card" data-name={model.name}>
              <div className="actions" style={{ justifyContent: "space-between" }}>
                <h2 style={{ margin: 0 }}>
                  {model.name} <span className="muted">· {model.domain} events · {KIND_WORDS[model.kind] ?? model.kind}</span>
                </h2>
                <div className="actions">
                  <span data-testid="model-live">{model.live_version ? `v${model.live_version} live` : "nothing live"}</span>
                  {canChange && model.can_roll_back && back && (
                    <button type="button" onClick={() => setPending({ kind: "rollback", model, target: back })}>
                      Roll back to v{back.version}
                    </button>
                  )}
                </div>
              </div>
              <table>
                <thead>
                  <tr><th>Version</th><th>State</th><th>Quality on held-out data</th><th>Alert threshold</th><th>Trained</th><th /></tr>
                </thead>
                <tbody>
                  {model.versions.map((v) => (
                    <tr key={v.version} data-testid="model-version" data-live={v.live}>
                      <td>v{v.version}</td>
                      <td>{v.live ? <span className="badge sev-low">Live</span> : <span className="muted">{stageWord(v)}</span>}</td>
                      <td>
                        <div className="metrics">
                          {metricRows(v.metrics).map(([label, value]) => <span key={label}>{label} <b>{value}</b></span>)}
                          {metricRows(v.metrics).length === 0 && <span>not measured</span>}
                        </div>
                      </td>
                      <td>{formatNumber(v.threshold, 3)}</td>
                      <td>{timeAgo(v.created_at)}</td>
                      <td>
                        {canChange && !v.live && (
                          <button type="button" onClick={() => setPending({ kind: "promote", model, version: v })}>
                            Promote
                          </button>
                        )}
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          );
        })}
      </div>
      {pending && (
        <ConfirmDialog
          title={pending.kind === "promote" ? "Promote this version?" : "Roll back?"}
          message={
            pending.kind === "promote"
              ? promoteQuestion(pending.model, pending.version)
              : `Go back to ${pending.model.name} v${pending.target.version}? The live v${pending.model.live_version} is retired. The pipeline switches within seconds.`
          }
          confirmLabel={pending.kind === "promote" ? "Promote" : "Roll back"}
          danger={pending.kind === "rollback"}
          busy={busy}
          onConfirm={() => void confirm()}
          onCancel={() => setPending(null)}
        />
      )}
    </>
  );
}
