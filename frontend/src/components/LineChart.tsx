import {
  CategoryScale,
  Chart,
  Filler,
  Legend,
  LinearScale,
  LineController,
  LineElement,
  PointElement,
  Tooltip,
} from "chart.js";
import { useEffect, useRef } from "react";

Chart.register(LineController, LineElement, PointElement, LinearScale, CategoryScale, Legend, Tooltip, Filler);

export interface Series {
  label: string;
  color: string;
  values: number[];
}

/** A live line chart: the chart object is kept and its data replaced, so updates do not flicker. */
export function LineChart({ labels, series, title }: { labels: string[]; series: Series[]; title: string }) {
  const canvas = useRef<HTMLCanvasElement | null>(null);
  const chart = useRef<Chart<"line"> | null>(null);

  useEffect(() => {
    if (!canvas.current) return;
    chart.current = new Chart(canvas.current, {
      type: "line",
      data: { labels: [], datasets: [] },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        scales: {
          x: { ticks: { color: "#94a3b8", maxTicksLimit: 6 }, grid: { color: "#1e293b" } },
          y: { beginAtZero: true, ticks: { color: "#94a3b8" }, grid: { color: "#1e293b" } },
        },
        plugins: { legend: { labels: { color: "#e2e8f0", boxWidth: 12 } } },
        elements: { point: { radius: 0 }, line: { tension: 0.25, borderWidth: 2 } },
      },
    });
    return () => {
      chart.current?.destroy();
      chart.current = null;
    };
  }, []);

  useEffect(() => {
    const current = chart.current;
    if (!current) return;
    current.data.labels = labels;
    current.data.datasets = series.map((s) => ({
      label: s.label,
      data: s.values,
      borderColor: s.color,
      backgroundColor: `${s.color}33`,
    }));
    current.update("none");
  }, [labels, series]);

  return (
    <div className="chart-box">
      <canvas ref={canvas} role="img" aria-label={title} />
    </div>
  );
}
