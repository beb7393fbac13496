// Shapes of the API's answers (see /api/docs); only the fields the dashboard reads.

export type Role = "viewer" | "analyst" | "admin";
export type Severity = "low" | "medium" | "high" | "critical";

export interface TokenPair {
  access_token: string;
  refresh_token: string;
  token_type: "bearer";
  expires_in: number;
  refresh_expires_in: number;
}

export interface User {
  id: number;
  username: string;
  full_name: string;
  role: Role;
  must_change_password: boolean;
}

export interface ApiErrorBody {
  error: { code: string; message: string; details: unknown };
}

export interface Page<T> {
  items: T[];
  total: number;
  page: number;
  size: number;
}

export interface Alert {
  id: number;
  rule_id: string | null;
  title: string;
  description: string;
  severity: Severity;
  status: "new" | "acknowledged" | "closed";
  score: number;
  domain: string;
  entity_type: string | null;
  entity_id: string | null;
  event_ids: string[];
  explanation: Record<string, unknown>;
  count: number;
  first_seen: string;
  last_seen: string;
  assignee_id: number | null;
}

export interface Incident {
  id: number;
  title: string;
  summary: string;
  severity: Severity;
  status: string;
  disposition: string | null;
  risk: number;
  domains: string[];
  labels: string[];
  evidence: Record<string, unknown>;
  assignee_id: number | null;
  merged_into_id: number | null;
  first_seen: string;
  last_seen: string;
  created_at: string;
  updated_at: string;
  closed_at: string | null;
}

export interface TimelineEntry {
  ts: string;
  kind: string;
  text: string;
  alert_id?: number | null;
  event_id?: string | null;
  actor?: string | null;
}

export interface IncidentDetail extends Incident {
  alerts: Alert[];
  timeline: TimelineEntry[];
}

export interface Note {
  id: number;
  author: string;
  text: string;
  created_at: string;
}

export interface Kpi {
  ts: string;
  events_per_s: Record<string, number>;
  events_total: Record<string, number>;
  alerts_per_min: Record<string, number>;
  open_incidents: number;
  lag_p50_ms: number | null;
  lag_p99_ms: number | null;
  queue_depth: number;
  queue_capacity: number;
  dead_letters: number;
  pipeline_running: boolean;
}

export interface ModelVersion {
  name: string;
  version: string;
  status: string | null;
  created_at: string | null;
}

export interface Overview {
  kpi: Kpi;
  series: Kpi[];
  recent_incidents: Incident[];
  models: ModelVersion[];
}

export interface MapPoint {
  event_id: string;
  ts: string;
  domain: string;
  lat: number;
  lon: number;
  country: string | null;
  entity_type: string;
  entity_id: string | null;
  risk: number;
  alert_id: number | null;
  alert_title: string | null;
  severity: Severity | null;
}

export interface TravelArc {
  event_id: string;
  domain: string;
  entity_type: string;
  entity_id: string;
  from_lat: number;
  from_lon: number;
  from_ts: string;
  to_lat: number;
  to_lon: number;
  to_ts: string;
  distance_km: number | null;
  speed_kmh: number | null;
  text: string;
}

export interface MapPoints {
  points: MapPoint[];
  arcs: TravelArc[];
  since: string;
  truncated: boolean;
}

export interface GraphNode {
  id: string;
  type: string;
  key: string;
  label: string;
  risk: number;
  community: number | null;
  blocked: boolean;
}

export interface GraphEdge {
  source: string;
  target: string;
  relation: string;
  count: number;
  amount: number | null;
  first_seen: string | null;
  last_seen: string | null;
}

export interface Community {
  id: number;
  size: number;
  risk: number;
  reasons: string[];
}

export interface Subgraph {
  nodes: GraphNode[];
  edges: GraphEdge[];
  communities: Community[];
  nodes_omitted: number;
}

export interface RuleSummary {
  id: string;
  title: string;
  domain: string;
  kind: string;
  severity: Severity;
  status: string;
  attack: string[];
  typology: string | null;
  enabled: boolean;
  hits_24h: number;
  updated_by: string | null;
  updated_at: string | null;
}

export interface RuleDetail extends RuleSummary {
  description: string;
  triage: string;
  explain: string;
  entity: string;
  path: string | null;
  samples_positive: Record<string, unknown>[];
  samples_negative: Record<string, unknown>[];
}

export interface SampleResult {
  kind: "positive" | "negative";
  label: string;
  expected: "fires" | "stays quiet";
  hits: number;
  passed: boolean;
}

export interface SampleRun {
  rule_id: string;
  passed: boolean;
  results: SampleResult[];
  problems: string[];
}

export interface BacktestResult {
  rule_id: string;
  title: string;
  start: string;
  end: string;
  events: Record<string, number>;
  hits: number;
  labelled_hits: number;
  true_hits: number;
  labelled_bad: number;
  flagged_bad: number;
  precision: number | null;
  recall: number | null;
  by_day: Record<string, number>;
  top_entities: [string, number][];
  elapsed_s: number;
}

export interface RegisteredVersion {
  name: string;
  version: number;
  kind: string;
  domain: string;
  stage: "candidate" | "production" | "archived";
  live: boolean;
  metrics: Record<string, unknown>;
  threshold: number;
  created_at: string;
  promoted_at: string | null;
}

export interface RegisteredModel {
  name: string;
  kind: string;
  domain: string;
  live_version: number | null;
  can_roll_back: boolean;
  versions: RegisteredVersion[];
}

export interface GraphPath {
  found: boolean;
  nodes: GraphNode[];
  edges: GraphEdge[];
  explanation: string;
}
