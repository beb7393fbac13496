import { drag } from "d3-drag";
import { forceCenter, forceCollide, forceLink, forceManyBody, forceSimulation, type SimulationLinkDatum, type SimulationNodeDatum } from "d3-force";
import { select } from "d3-selection";
import { zoom } from "d3-zoom";
import { useEffect, useRef, useState, type FormEvent } from "react";
import { useSearchParams } from "react-router-dom";
import { api, ApiError } from "../api/client";
import type { GraphNode, Subgraph } from "../api/types";
import { ErrorNote } from "../components/common";
import { entityWord, riskWord } from "../lib/format";
import { communityColor, mergeSubgraphs, nodeRadius, pathEdgeKeys } from "../lib/graph";

const TYPES = ["card_id", "user_id", "account_id", "device_id", "src_ip", "merchant_id", "payee_id"];

interface PathAnswer {
  found: boolean;
  nodes: GraphNode[];
  edges: Subgraph["edges"];
  explanation: string;
}

type SimNode = GraphNode & SimulationNodeDatum;
type SimLink = SimulationLinkDatum<SimNode> & { relation: string; count: number; key: string };

function entityUrl(type: string, id: string, hops: number): string {
  return `/api/graph/entity/${encodeURIComponent(type)}/${encodeURIComponent(id)}?hops=${hops}`;
}

export function GraphPage() {
  const [params, setParams] = useSearchParams();
  const [type, setType] = useState(params.get("type") ?? "card_id");
  const [id, setId] = useState(params.get("id") ?? "");
  const [toType, setToType] = useState("user_id");
  const [toId, setToId] = useState("");
  const [graph, setGraph] = useState<Subgraph | null>(null);
  const [path, setPath] = useState<PathAnswer | null>(null);
  const [selected, setSelected] = useState<GraphNode | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [unavailable, setUnavailable] = useState(false);
  const svgRef = useRef<SVGSVGElement | null>(null);

  async function load(t: string, key: string, hops = 2, merge = false) {
    setError(null);
    try {
      const sub = await api<Subgraph>(entityUrl(t, key, hops));
      setUnavailable(false);
      setGraph((old) => (merge && old ? mergeSubgraphs(old, sub) : sub));
    } catch (err) {
      if (err instanceof ApiError && err.status === 404 && err.code === "not_found" && !merge) {
        // either the graph API is not deployed, or the entity is unknown: say which
        setUnavailable(err.message === "Not Found");
      }
      setError(err);
      if (!merge) setGraph(null);
    }
  }

  useEffect(() => {
    const t = params.get("type");
    const key = params.get("id");
    if (t && key) void load(t, key);
  }, [params]);

  function submit(event: FormEvent) {
    event.preventDefault();
    if (id.trim()) setParams({ type, id: id.trim() });
  }

  async function findPath(event: FormEvent) {
    event.preventDefault();
    setError(null);
    try {
      const answer = await api<PathAnswer>("/api/graph/path", {
        params: { from_type: type, from_id: id, to_type: toType, to_id: toId },
      });
      setPath(answer);
      if (answer.found && graph) {
        setGraph(mergeSubgraphs(graph, { nodes: answer.nodes, edges: answer.edges, communities: [], nodes_omitted: 0 }));
      }
    } catch (err) {
      setError(err);
    }
  }

  useEffect(() => {
    const svg = svgRef.current;
    if (!svg || !graph) return;
    const width = svg.clientWidth || 900;
    const height = svg.clientHeight || 600;
    const root = select(svg);
    root.selectAll("*").remove();
    const layer = root.append("g");
    root.call(zoom<SVGSVGElement, unknown>().scaleExtent([0.2, 5]).on("zoom", (e) => layer.attr("transform", e.transform)));
    const onPath = pathEdgeKeys(path?.found ? path.nodes.map((n) => n.id) : []);
    const pathNodes = new Set(path?.found ? path.nodes.map((n) => n.id) : []);
    const nodes: SimNode[] = graph.nodes.map((n) => ({ ...n }));
    const links: SimLink[] = graph.edges.map((e) => ({
      source: e.source,
      target: e.target,
      relation: e.relation,
      count: e.count,
      key: `${e.source}|${e.target}`,
    }));
    const simulation = forceSimulation<SimNode>(nodes)
      .force("link", forceLink<SimNode, SimLink>(links).id((d) => d.id).distance(70))
      .force("charge", forceManyBody().strength(-220))
      .force("center", forceCenter(width / 2, height / 2))
      .force("collide", forceCollide<SimNode>((d) => nodeRadius(d.risk) + 4));
    const link = layer
      .append("g")
      .selectAll("line")
      .data(links)
      .join("line")
      .attr("class", (d) => (onPath.has(d.key) ? "on-path" : ""))
      .attr("stroke-width", (d) => Math.min(6, 1 + Math.log2(1 + d.count)));
    link.append("title").text((d) => `${d.relation} ×${d.count}`);
    const node = layer
      .append("g")
      .selectAll<SVGCircleElement, SimNode>("circle")
      .data(nodes)
      .join("circle")
      .attr("r", (d) => nodeRadius(d.risk))
      .attr("fill", (d) => communityColor(d.community))
      .attr("class", (d) => [d.blocked ? "blocked" : "", pathNodes.has(d.id) ? "on-path" : ""].join(" "))
      .attr("tabindex", 0)
      .attr("role", "button")
      .attr("aria-label", (d) => `${entityWord(d.type)} ${d.label}, risk ${riskWord(d.risk)}`)
      .attr("data-testid", "graph-node")
      .on("click", (_, d) => {
        setSelected(d);
        void load(d.type, d.key, 1, true);
      })
      .on("keydown", (event: KeyboardEvent, d) => {
        if (event.key === "Enter") {
          setSelected(d);
          void load(d.type, d.key, 1, true);
        }
      })
      .call(
        drag<SVGCircleElement, SimNode>()
          .on("start", (e, d) => {
            if (!e.active) simulation.alphaTarget(0.3).restart();
            d.fx = d.x;
            d.fy = d.y;
          })
          .on("drag", (e, d) => {
            d.fx = e.x;
            d.fy = e.y;
          })
          .on("end", (e, d) => {
            if (!e.active) simulation.alphaTarget(0);
            d.fx = null;
            d.fy = null;
          }),
      );
    node.append("title").text((d) => `${entityWord(d.type)} ${d.label} — risk ${riskWord(d.risk)}${d.blocked ? " — blocked" : ""}`);
    const label = layer
      .append("g")
      .selectAll("text")
      .data(nodes)
      .join("text")
      .text((d) => d.label)
      .attr("dx", 10)
      .attr("dy", 3);
    simulation.on("tick", () => {
      link
        .attr("x1", (d) => (d.source as SimNode).x ?? 0)
        .attr("y1", (d) => (d.source as SimNode).y ?? 0)
        .attr("x2", (d) => (d.target as SimNode).x ?? 0)
        .attr("y2", (d) => (d.target as SimNode).y ?? 0);
      node.attr("cx", (d) => d.x ?? 0).attr("cy", (d) => d.y ?? 0);
      label.attr("x", (d) => d.x ?? 0).attr("y", (d) => d.y ?? 0);
    });
    return () => {
      simulation.stop();
    };
  }, [graph, path]);

  return (
    <>
      <h1>Graph explorer</h1>
      <div className="toolbar">
        <form className="actions" onSubmit={submit} role="search">
          <div className="field">
            <label htmlFor="g-type">Start from</label>
            <select id="g-type" value={type} onChange={(e) => setType(e.target.value)}>
              {TYPES.map((t) => <option key={t} value={t}>{entityWord(t)}</option>)}
            </select>
          </div>
          <div className="field">
            <label htmlFor="g-id">Id</label>
            <input id="g-id" value={id} onChange={(e) => setId(e.target.value)} placeholder="e.g. card id" />
          </div>
          <button type="submit" className="primary">Show neighbourhood</button>
        </form>
        <form className="actions" onSubmit={(e) => void findPath(e)}>
          <div className="field">
            <label htmlFor="g-to-type">Path to</label>
            <select id="g-to-type" value={toType} onChange={(e) => setToType(e.target.value)}>
              {TYPES.map((t) => <option key={t} value={t}>{entityWord(t)}</option>)}
            </select>
          </div>
          <div className="field">
            <label htmlFor="g-to-id">Id</label>
            <input id="g-to-id" value={toId} onChange={(e) => setToId(e.target.value)} />
          </div>
          <button type="submit" disabled={!id || !toId}>Find the link</button>
        </form>
      </div>
      {unavailable ? (
        <div className="notice">The graph service is not available on this server yet.</div>
      ) : (
        <ErrorNote error={error} />
      )}
      {path && <p className={path.found ? "" : "muted"}>{path.explanation}</p>}
      {graph && (
        <p className="muted" data-testid="graph-summary">
          {graph.nodes.length} entities, {graph.edges.length} links
          {graph.nodes_omitted ? `, ${graph.nodes_omitted} more not shown` : ""} ·{" "}
          {graph.communities.filter((c) => c.risk >= 0.5).map((c) => `group ${c.id}: ${c.reasons.join("; ")}`).join(" · ")}
          {selected && ` · selected ${entityWord(selected.type)} ${selected.label} (risk ${riskWord(selected.risk)}) — click to expand`}
        </p>
      )}
      {!graph && !error && <p className="muted">Pick an entity (or open one from an alert or the map) to see who it is linked to.</p>}
      <svg ref={svgRef} className="graph" role="img" aria-label="Entity graph" />
    </>
  );
}
