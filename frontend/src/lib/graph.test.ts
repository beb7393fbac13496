import { describe, expect, it } from "vitest";
import type { Subgraph } from "../api/types";
import { communityColor, mergeSubgraphs, nodeRadius, pathEdgeKeys } from "./graph";

const node = (id: string, risk = 0) => ({ id, type: "card_id", key: id, label: id, risk, community: 1, blocked: false });
const edge = (source: string, target: string) => ({
  source,
  target,
  relation: "paid_at",
  count: 1,
  amount: null,
  first_seen: null,
  last_seen: null,
});

describe("graph helpers", () => {
  it("merges an expanded neighbourhood without duplicates", () => {
    const base: Subgraph = { nodes: [node("a", 0.9), node("b")], edges: [edge("a", "b")], communities: [], nodes_omitted: 1 };
    const extra: Subgraph = {
      nodes: [node("b", 0.5), node("c")],
      edges: [edge("a", "b"), edge("b", "c")],
      communities: [{ id: 1, size: 3, risk: 0.7, reasons: ["shared device"] }],
      nodes_omitted: 2,
    };
    const merged = mergeSubgraphs(base, extra);
    expect(merged.nodes.map((n) => n.id).sort()).toEqual(["a", "b", "c"]);
    expect(merged.nodes.find((n) => n.id === "b")?.risk).toBe(0); // what was shown stays
    expect(merged.edges).toHaveLength(2);
    expect(merged.communities).toHaveLength(1);
    expect(merged.nodes_omitted).toBe(3);
  });

  it("sizes, colours and path keys", () => {
    expect(nodeRadius(1)).toBeGreaterThan(nodeRadius(0));
    expect(communityColor(null)).toBe("#64748b");
    expect(communityColor(3)).not.toBe(communityColor(4));
    expect([...pathEdgeKeys(["a", "b", "c"])].sort()).toEqual(["a|b", "b|a", "b|c", "c|b"]);
  });
});
