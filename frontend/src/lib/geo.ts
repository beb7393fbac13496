// Geometry for the map: curved arcs between two places, and risk colours.

export type LatLon = [number, number];

/** Points of a gentle curve from `a` to `b` (a quadratic Bézier bent sideways), for travel arcs. */
export function arcPoints(a: LatLon, b: LatLon, steps = 24, bend = 0.2): LatLon[] {
  const [lat1, lon1] = a;
  const [lat2, lon2] = b;
  const midLat = (lat1 + lat2) / 2;
  const midLon = (lon1 + lon2) / 2;
  // control point: the midpoint pushed perpendicular to the segment
  const dLat = lat2 - lat1;
  const dLon = lon2 - lon1;
  const cLat = midLat + dLon * bend;
  const cLon = midLon - dLat * bend;
  const points: LatLon[] = [];
  for (let i = 0; i <= steps; i++) {
    const t = i / steps;
    const u = 1 - t;
    points.push([u * u * lat1 + 2 * u * t * cLat + t * t * lat2, u * u * lon1 + 2 * u * t * cLon + t * t * lon2]);
  }
  return points;
}

/** A colour from blue (calm) through amber to red (risky), for risk between 0 and 1. */
export function riskColor(risk: number): string {
  const r = Math.min(1, Math.max(0, Number.isFinite(risk) ? risk : 0));
  if (r >= 0.85) return "#f43f5e";
  if (r >= 0.6) return "#fb923c";
  if (r >= 0.3) return "#fbbf24";
  return "#38bdf8";
}

type Ring = number[][];

/**
 * Make a ring's longitudes continuous: a shape that crosses the 180° meridian (Russia, Fiji) would
 * otherwise be drawn with a line across the whole map. Points after a jump of more than 180° are
 * shifted by 360°, which Leaflet draws just beyond the edge.
 */
export function unwrapRing(ring: Ring): Ring {
  const out: Ring = [];
  let shift = 0;
  let previous: number | null = null;
  for (const point of ring) {
    const lon = point[0] ?? 0;
    if (previous !== null) {
      const delta = lon + shift - previous;
      if (delta > 180) shift -= 360;
      else if (delta < -180) shift += 360;
    }
    const shifted = lon + shift;
    out.push([shifted, ...point.slice(1)]);
    previous = shifted;
  }
  return out;
}
