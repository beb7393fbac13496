// The incident's key entities and how the graph links them, in plain words.
import type { Alert, GraphPath } from "../api/types";
import { entityWord } from "./format";

export interface EntityRef {
  type: string;
  id: string;
}

const LINKABLE = new Set([
  "card_id", "user_id", "account_id", "device_id", "src_ip", "dst_ip", "merchant_id", "terminal_id", "payee_id", "principal_id",
]);

/** The entities an incident is about, most mentioned first: each alert's entity, then its context. */
export function keyEntities(alerts: Alert[], limit = 4): EntityRef[] {
  const counts = new Map<string, { ref: EntityRef; n: number; order: number }>();
  const add = (type: string | null | undefined, id: unknown, weight: number) => {
    if (!type || !LINKABLE.has(type) || typeof id !== "string" || !id) return;
    const key = `${type}:${id}`;
    const seen = counts.get(key);
    if (seen) seen.n += weight;
    else counts.set(key, { ref: { type, id }, n: weight, order: counts.size });
  };
  for (const alert of alerts) {
    add(alert.entity_type, alert.entity_id, 10);
    const entities = alert.explanation?.entities;
    if (entities && typeof entities === "object") {
      for (const [type, ids] of Object.entries(entities as Record<string, unknown>)) {
        if (Array.isArray(ids)) for (const id of ids.slice(0, 3)) add(type, id, 1);
      }
    }
  }
  return [...counts.values()]
    .sort((a, b) => b.n - a.n || a.order - b.order)
    .slice(0, limit)
    .map((c) => c.ref);
}

/** Pairs to ask the graph about: the main entity with each other key entity. */
export function pathPairs(entities: EntityRef[]): [EntityRef, EntityRef][] {
  const [main, ...others] = entities;
  return main ? others.map((other) => [main, other]) : [];
}

function shortId(id: string): string {
  return id.length > 14 ? `${id.slice(0, 12)}…` : id;
}

/** "card 4411", "IP address 203.0.113.7": the entity's kind in words (acronyms kept) and a short id. */
export function entityName(ref: EntityRef): string {
  const word = entityWord(ref.type);
  const kind = /^[A-Z]{2}/.test(word) ? word : word.charAt(0).toLowerCase() + word.slice(1);
  return `${kind} ${shortId(ref.id)}`;
}

/** How a link reads from its source entity, and from its target entity (the graph's relations). */
const FORWARD: Record<string, string> = {
  used_at: "used at",
  paid_at: "paid at",
  holds: "holds",
  owns: "owns",
  paid: "sent money to",
  used_device: "used",
  used_ip: "connected from",
  added_payee: "added the payee",
  called_from: "called the cloud from",
  is_principal: "acts in the cloud as",
  connected_to: "connected to",
};
const BACKWARD: Record<string, string> = {
  used_at: "served",
  paid_at: "was paid by",
  holds: "is held by",
  owns: "is owned by",
  paid: "received money from",
  used_device: "was used by",
  used_ip: "was used by",
  added_payee: "was added as a payee by",
  called_from: "was used by",
  is_principal: "is the cloud identity of",
  connected_to: "was contacted by",
};

/**
 * A path as one sentence: "Card 4411 used at terminal t-88, which also served card 5520".
 * The server's own explanation when no path was found.
 */
export function pathSentence(path: GraphPath): string {
  if (!path.found || path.nodes.length < 2) return path.explanation;
  const byId = new Map(path.nodes.map((n) => [n.id, n]));
  const name = (id: string) => {
    const node = byId.get(id);
    return node ? entityName({ type: node.type, id: node.key }) : id;
  };
  const order = path.nodes.map((n) => n.id);
  let text = name(order[0] ?? "");
  for (let i = 0; i + 1 < order.length; i++) {
    const a = order[i] ?? "";
    const b = order[i + 1] ?? "";
    const edge = path.edges.find((e) => (e.source === a && e.target === b) || (e.source === b && e.target === a));
    const forward = !edge || edge.source === a;
    const verb = edge
      ? (forward ? FORWARD : BACKWARD)[edge.relation] ?? edge.relation.replace(/_/g, " ")
      : "is linked to";
    text += i === 0 ? ` ${verb} ${name(b)}` : `, which ${forward ? "" : "also "}${verb} ${name(b)}`;
  }
  return text.charAt(0).toUpperCase() + text.slice(1);
}
