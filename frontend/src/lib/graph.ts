// Pure helpers of the graph explorer (kept apart from D3 so they can be tested).
import type { GraphEdge, GraphNode, Subgraph } from "../api/types";

/** Merge `extra` into `base`: nodes by id, edges by (source, target, relation); base wins on conflicts. */
export function mergeSubgraphs(base: Subgraph, extra: Subgraph): Subgraph {
  const nodes = new Map<string, GraphNode>();
  for (const n of extra.nodes) nodes.set(n.id, n);
  for (const n of base.nodes) nodes.set(n.id, n);
  const key = (e: GraphEdge) => `${e.source}|${e.target}|${e.relation}`;
  const edges = new Map<string, GraphEdge>();
  for (const e of extra.edges) edges.set(key(e), e);
  for (const e of base.edges) edges.set(key(e), e);
  const communities = new Map(extra.communities.map((c) => [c.id, c]));
  for (const c of base.communities) communities.set(c.id, c);
  return {
    nodes: [...nodes.values()],
    edges: [...edges.values()].filter((e) => nodes.has(e.source) && nodes.has(e.target)),
    communities: [...communities.values()],
    nodes_omitted: base.nodes_omitted + extra.nodes_omitted,
  };
}

const PALETTE = ["#38bdf8", "#a78bfa", "#34d399", "#fbbf24", "#f472b6", "#60a5fa", "#facc15", "#2dd4bf", "#c084fc"];

/** A stable colour per community (grey for none). */
export function communityColor(community: number | null | undefined): string {
  if (community === null || community === undefined) return "#64748b";
  return PALETTE[Math.abs(community) % PALETTE.length] ?? "#64748b";
}

/** Node radius grows with risk, so risky entities stand out even in a busy neighbourhood. */
export function nodeRadius(risk: number): number {
  return 6 + 10 * Math.min(1, Math.max(0, risk || 0));
}

/** Ids of the edges along a path of node ids, in either direction. */
export function pathEdgeKeys(pathNodes: string[]): Set<string> {
  const keys = new Set<string>();
  for (let i = 0; i + 1 < pathNodes.length; i++) {
    keys.add(`${pathNodes[i]}|${pathNodes[i + 1]}`);
    keys.add(`${pathNodes[i + 1]}|${pathNodes[i]}`);
  }
  return keys;
}
