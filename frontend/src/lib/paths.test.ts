import { describe, expect, it } from "vitest";
import type { Alert, GraphPath } from "../api/types";
import { keyEntities, pathPairs, pathSentence } from "./paths";

const alert = (entityType: string | null, entityId: string | null, entities: Record<string, string[]> = {}): Alert => ({
  id: 1,
  rule_id: "r",
  title: "t",
  description: "",
  severity: "high",
  status: "new",
  score: 0,
  domain: "payment",
  entity_type: entityType,
  entity_id: entityId,
  event_ids: [],
  explanation: { entities },
  count: 1,
  first_seen: "2026-11-24T00:00:00Z",
  last_seen: "2026-11-24T00:00:00Z",
  assignee_id: null,
});

const node = (type: string, key: string) => ({ id: `${type}:${key}`, type, key, label: key, risk: 0, community: null, blocked: false });
const edge = (source: string, target: string, relation: string) => ({ source, target, relation, count: 1, amount: 10, first_seen: null, last_seen: null });

describe("keyEntities", () => {
  it("ranks alert entities before context ones and drops unknown types", () => {
    const alerts = [
      alert("card_id", "4411", { terminal_id: ["T-88"], country: ["FR"] }),
      alert("card_id", "5520", { terminal_id: ["T-88"] }),
      alert("card_id", "4411"),
    ];
    expect(keyEntities(alerts)).toEqual([
      { type: "card_id", id: "4411" },
      { type: "card_id", id: "5520" },
      { type: "terminal_id", id: "T-88" },
    ]);
  });
  it("pairs the main entity with each other one", () => {
    const pairs = pathPairs([{ type: "card_id", id: "a" }, { type: "card_id", id: "b" }, { type: "user_id", id: "u" }]);
    expect(pairs.map(([x, y]) => `${x.id}>${y.id}`)).toEqual(["a>b", "a>u"]);
    expect(pathPairs([])).toEqual([]);
  });
});

describe("pathSentence", () => {
  it("reads a card, its terminal and the other card served there", () => {
    const path: GraphPath = {
      found: true,
      nodes: [node("card_id", "4411"), node("terminal_id", "T-88"), node("card_id", "5520")],
      edges: [edge("card_id:4411", "terminal_id:T-88", "used_at"), edge("card_id:5520", "terminal_id:T-88", "used_at")],
      explanation: "server words",
    };
    expect(pathSentence(path)).toBe("Card 4411 used at terminal T-88, which also served card 5520");
  });
  it("shortens long ids and follows links forward", () => {
    const path: GraphPath = {
      found: true,
      nodes: [node("user_id", "customer-000123456789"), node("account_id", "acc1"), node("payee_id", "p9")],
      edges: [edge("user_id:customer-000123456789", "account_id:acc1", "owns"), edge("account_id:acc1", "payee_id:p9", "paid")],
      explanation: "",
    };
    expect(pathSentence(path)).toBe("Customer customer-000… owns account acc1, which sent money to payee p9");
  });
  it("names the graph's entity types in words", () => {
    const path: GraphPath = {
      found: true,
      nodes: [node("principal_id", "arn1"), node("ip", "203.0.113.77")],
      edges: [edge("principal_id:arn1", "ip:203.0.113.77", "called_from")],
      explanation: "",
    };
    expect(pathSentence(path)).toBe("Cloud identity arn1 called the cloud from IP address 203.0.113.77");
  });
  it("gives the server's words when there is no path", () => {
    expect(pathSentence({ found: false, nodes: [node("card_id", "a"), node("card_id", "b")], edges: [], explanation: "No link was seen." })).toBe(
      "No link was seen.",
    );
  });
});
