// Plain-language formatting for people on a SOC floor, not for data scientists.

const SEVERITY_ORDER = ["critical", "high", "medium", "low"] as const;

export function severityRank(severity: string): number {
  const index = SEVERITY_ORDER.indexOf(severity as (typeof SEVERITY_ORDER)[number]);
  return index < 0 ? SEVERITY_ORDER.length : index;
}

/** "3 s ago", "12 min ago", "2 h ago", then a date. */
export function timeAgo(iso: string, now: number = Date.now()): string {
  const then = Date.parse(iso);
  if (Number.isNaN(then)) return "—";
  const seconds = Math.max(0, Math.round((now - then) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.round(minutes / 60);
  if (hours < 48) return `${hours} h ago`;
  return new Date(then).toISOString().slice(0, 10);
}

export function formatNumber(value: number | null | undefined, digits = 0): string {
  if (value === null || value === undefined || !Number.isFinite(value)) return "—";
  return value.toLocaleString("en-GB", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

/** Milliseconds as people say them: "40 ms", "1.2 s". */
export function formatLag(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "—";
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

const ENTITY_WORDS: Record<string, string> = {
  card_id: "Card",
  user_id: "Customer",
  account_id: "Account",
  device_id: "Device",
  src_ip: "IP address",
  dst_ip: "IP address",
  ip: "IP address",
  merchant_id: "Merchant",
  terminal_id: "Terminal",
  payee_id: "Payee",
  principal_id: "Cloud identity",
};

export function entityWord(type: string | null | undefined): string {
  return (type && ENTITY_WORDS[type]) || "Entity";
}

const STATUS_WORDS: Record<string, string> = {
  new: "New",
  open: "New",
  triaged: "Triaged",
  investigating: "Investigating",
  contained: "Contained",
  resolved: "Resolved",
  closed: "Closed",
  acknowledged: "Acknowledged",
};

export function statusWord(status: string): string {
  return STATUS_WORDS[status] ?? status;
}

/** Risk 0..1 as words: what an analyst would say. */
export function riskWord(risk: number): string {
  if (risk >= 0.85) return "very high";
  if (risk >= 0.6) return "high";
  if (risk >= 0.3) return "moderate";
  return "low";
}

export function sum(values: Record<string, number> | undefined): number {
  return values ? Object.values(values).reduce((a, b) => a + b, 0) : 0;
}
