import L from "leaflet";
import "leaflet.markercluster";
import { useEffect, useRef, useState, type MouseEvent } from "react";
import { useNavigate } from "react-router-dom";
import { feature } from "topojson-client";
import type { GeometryCollection, Topology } from "topojson-specification";
import countries110m from "world-atlas/countries-110m.json";
import { api } from "../api/client";
import type { MapPoints } from "../api/types";
import { ErrorNote, useLoader, useThrottled } from "../components/common";
import { useLive } from "../live/LiveContext";
import { arcPoints, riskColor, unwrapRing } from "../lib/geo";
import { entityWord, timeAgo } from "../lib/format";

const WINDOWS: Record<string, number> = { "15 minutes": 15, "1 hour": 60, "6 hours": 360, "24 hours": 1440 };

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c] ?? c);
}

/** The offline basemap: country shapes bundled in the build (no tile server). */
function basemap(): L.GeoJSON {
  const topology = countries110m as unknown as Topology<{ countries: GeometryCollection }>;
  const shapes = feature(topology, topology.objects.countries);
  const features = shapes.features
    .filter((f) => f.id !== "010") // Antarctica: no bank customers, and it distorts the view
    .map((f) => {
      const g = f.geometry;
      if (g.type === "Polygon") return { ...f, geometry: { ...g, coordinates: g.coordinates.map(unwrapRing) } };
      if (g.type === "MultiPolygon") {
        return { ...f, geometry: { ...g, coordinates: g.coordinates.map((p) => p.map(unwrapRing)) } };
      }
      return f;
    });
  return L.geoJSON({ ...shapes, features } as GeoJSON.FeatureCollection, {
    style: { color: "#334155", weight: 0.7, fillColor: "#16213a", fillOpacity: 1 },
    interactive: false,
  });
}

export function MapPage() {
  const navigate = useNavigate();
  const container = useRef<HTMLDivElement | null>(null);
  const map = useRef<L.Map | null>(null);
  const layers = useRef<{ clusters: L.MarkerClusterGroup; heat: L.LayerGroup; arcs: L.LayerGroup } | null>(null);
  const [minutes, setMinutes] = useState(60);
  const [showHeat, setShowHeat] = useState(true);
  const [showArcs, setShowArcs] = useState(true);

  const data = useLoader(
    () =>
      api<MapPoints>("/api/map/points", {
        params: { since: new Date(Date.now() - minutes * 60_000).toISOString(), limit: 2000 },
      }),
    [minutes],
  );
  const reload = useThrottled(() => void data.reload(), 5000);
  useLive("alerts", reload);
  useEffect(() => {
    const timer = setInterval(() => void data.reload(), 15_000);
    return () => clearInterval(timer);
  }, [data.reload]); // eslint-disable-line react-hooks/exhaustive-deps

  useEffect(() => {
    if (!container.current || map.current) return;
    const m = L.map(container.current, { worldCopyJump: true, minZoom: 2, maxZoom: 12, attributionControl: false });
    basemap().addTo(m);
    m.setView([30, 10], 2);
    const clusters = L.markerClusterGroup({ showCoverageOnHover: false, maxClusterRadius: 45 });
    const heat = L.layerGroup();
    const arcs = L.layerGroup();
    heat.addTo(m);
    clusters.addTo(m);
    arcs.addTo(m);
    map.current = m;
    layers.current = { clusters, heat, arcs };
    return () => {
      m.remove();
      map.current = null;
      layers.current = null;
    };
  }, []);

  useEffect(() => {
    const l = layers.current;
    const m = map.current;
    if (!l || !m) return;
    l.clusters.clearLayers();
    l.heat.clearLayers();
    l.arcs.clearLayers();
    const body = data.data;
    if (!body) return;
    const markers = body.points.map((p) => {
      const color = p.severity ? riskColor(p.severity === "critical" ? 1 : p.severity === "high" ? 0.9 : 0.6) : riskColor(p.risk);
      const icon = L.divIcon({
        className: "",
        html: `<span class="map-dot" style="display:block;width:12px;height:12px;border-radius:50%;background:${color};border:2px solid #0b1220"></span>`,
        iconSize: [12, 12],
      });
      const who = `${entityWord(p.entity_type)} ${escapeHtml(p.entity_id ?? "")}`;
      const graph = p.entity_id
        ? `<a href="/graph?type=${encodeURIComponent(p.entity_type)}&id=${encodeURIComponent(p.entity_id)}">See on the graph</a>`
        : "";
      const alert = p.alert_id
        ? `<div><strong>${escapeHtml(p.alert_title ?? "Alert")}</strong> (${escapeHtml(p.severity ?? "")})</div>
           <a href="/alerts?id=${p.alert_id}">Alert #${p.alert_id}</a> · `
        : "";
      return L.marker([p.lat, p.lon], { icon, title: `${p.domain} ${p.country ?? ""}`, keyboard: true }).bindPopup(
        `${alert}<div>${escapeHtml(p.domain)} · ${who} · ${escapeHtml(p.country ?? "")}</div>
         <div class="muted">${timeAgo(p.ts)}</div>${graph}`,
      );
    });
    l.clusters.addLayers(markers);
    if (showHeat) {
      for (const p of body.points) {
        if (p.risk <= 0.05 && !p.alert_id) continue;
        L.circle([p.lat, p.lon], {
          radius: 150_000 + 250_000 * p.risk,
          stroke: false,
          fillColor: riskColor(p.risk),
          fillOpacity: 0.12 + 0.18 * p.risk,
          interactive: false,
        }).addTo(l.heat);
      }
    }
    if (showArcs) {
      for (const arc of body.arcs) {
        L.polyline(arcPoints([arc.from_lat, arc.from_lon], [arc.to_lat, arc.to_lon]), {
          color: "#f43f5e",
          weight: 2,
          dashArray: "6 4",
        })
          .bindPopup(
            `<strong>Impossible travel</strong><div>${escapeHtml(arc.text)}</div>
             <a href="/graph?type=${encodeURIComponent(arc.entity_type)}&id=${encodeURIComponent(arc.entity_id)}">${entityWord(arc.entity_type)} ${escapeHtml(arc.entity_id)} on the graph</a>`,
          )
          .addTo(l.arcs);
      }
    }
  }, [data.data, showHeat, showArcs]);

  const body = data.data;
  return (
    <>
      <h1>Map</h1>
      <div className="toolbar">
        <div className="field">
          <label htmlFor="m-window">Since</label>
          <select id="m-window" value={minutes} onChange={(e) => setMinutes(Number(e.target.value))}>
            {Object.entries(WINDOWS).map(([label, value]) => (
              <option key={value} value={value}>the last {label}</option>
            ))}
          </select>
        </div>
        <label><input type="checkbox" checked={showHeat} onChange={(e) => setShowHeat(e.target.checked)} /> Risk heat</label>
        <label><input type="checkbox" checked={showArcs} onChange={(e) => setShowArcs(e.target.checked)} /> Impossible travel</label>
        <span className="muted" data-testid="map-counts">
          {body ? `${body.points.length} places · ${body.arcs.length} impossible trips${body.truncated ? " (most recent only)" : ""}` : "Loading…"}
        </span>
      </div>
      <div className="legend" aria-hidden="true">
        <span><i style={{ background: "#f43f5e" }} />alert or very risky</span>
        <span><i style={{ background: "#fb923c" }} />risky</span>
        <span><i style={{ background: "#fbbf24" }} />unusual</span>
        <span><i style={{ background: "#38bdf8" }} />normal</span>
      </div>
      <ErrorNote error={data.error} />
      <div
        ref={container}
        className="map"
        data-testid="map"
        role="region"
        aria-label="Map of recent activity"
        onClick={(event: MouseEvent) => {
          // links in popups are plain HTML: open them inside the app, without reloading the page
          const link = (event.target as HTMLElement).closest("a");
          const href = link?.getAttribute("href");
          if (href?.startsWith("/")) {
            event.preventDefault();
            navigate(href);
          }
        }}
      />
    </>
  );
}
