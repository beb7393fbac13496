import { useState } from "react";
import { api, ApiError } from "../api/client";
import { formatNumber } from "../lib/format";

interface MatchedEvent {
  event_id: string;
  ts: string;
  domain: string;
  score: number;
  model_explanation: Record<string, unknown> | null;
  features: Record<string, unknown>;
  fields: Record<string, unknown>;
}

interface Explanation {
  summary: string;
  rule_hits: number;
  matched_events: MatchedEvent[];
  events_not_stored: number;
}

function describe(value: unknown): string {
  if (typeof value === "number") return formatNumber(value, Number.isInteger(value) ? 0 : 2);
  if (typeof value === "boolean") return value ? "yes" : "no";
  return String(value);
}

/** Model contributions as plain lines: whatever words the model gave, else the feature and its weight. */
export function contributionLines(model: Record<string, unknown> | null): string[] {
  if (!model) return [];
  const lines: string[] = [];
  if (typeof model.text === "string") lines.push(model.text);
  const items = (model.contributions ?? model.top_features ?? model.features) as unknown;
  if (Array.isArray(items)) {
    for (const item of items.slice(0, 5)) {
      if (item && typeof item === "object") {
        const c = item as Record<string, unknown>;
        const words = c.text ?? c.description;
        if (typeof words === "string") lines.push(words);
        else if (typeof c.name === "string" || typeof c.feature === "string") {
          const weight = typeof c.contribution === "number" ? c.contribution : c.weight;
          lines.push(`${String(c.name ?? c.feature)}${weight !== undefined ? ` (${describe(weight)})` : ""}`);
        }
      }
    }
  }
  return lines;
}

/** "Show the evidence" for one alert: the events behind it with their features and the models' words. */
export function AlertExplanation({ alertId }: { alertId: number }) {
  const [open, setOpen] = useState(false);
  const [data, setData] = useState<Explanation | null>(null);
  const [missing, setMissing] = useState(false);

  async function toggle() {
    const next = !open;
    setOpen(next);
    if (next && !data && !missing) {
      try {
        setData(await api<Explanation>(`/api/alerts/${alertId}/explanation`));
      } catch (err) {
        if (err instanceof ApiError && err.status === 404) setMissing(true);
      }
    }
  }

  return (
    <div>
      <button type="button" onClick={() => void toggle()} aria-expanded={open}>
        {open ? "Hide the evidence" : "Show the evidence"}
      </button>
      {open && missing && <p className="muted">No stored evidence for this alert.</p>}
      {open && data && (
        <div className="explain" data-testid="alert-evidence">
          <p>{data.summary}</p>
          {data.matched_events.slice(0, 5).map((event) => (
            <div key={event.event_id} style={{ marginBottom: 8 }}>
              <div className="muted">
                {new Date(event.ts).toLocaleString("en-GB")} · {event.domain} · model score {formatNumber(event.score, 2)}
              </div>
              {contributionLines(event.model_explanation).map((line) => (
                <div key={line}>• {line}</div>
              ))}
              <div className="muted">
                {Object.entries(event.fields)
                  .slice(0, 6)
                  .map(([k, v]) => `${k}: ${describe(v)}`)
                  .join(" · ")}
              </div>
            </div>
          ))}
          {data.events_not_stored > 0 && (
            <p className="muted">
              {data.events_not_stored === 1 ? "One more event" : `${data.events_not_stored} more events`} looked
              ordinary to the models and {data.events_not_stored === 1 ? "is" : "are"} in the event lake only.
            </p>
          )}
        </div>
      )}
    </div>
  );
}
