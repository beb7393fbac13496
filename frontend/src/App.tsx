import { NavLink, Navigate, Route, Routes } from "react-router-dom";
import { useAuth } from "./auth";
import { LiveProvider, useLiveState } from "./live/LiveContext";
import { AlertsPage } from "./pages/Alerts";
import { GraphPage } from "./pages/Graph";
import { IncidentDetailPage } from "./pages/IncidentDetail";
import { IncidentsPage } from "./pages/Incidents";
import { LoginPage } from "./pages/Login";
import { MapPage } from "./pages/MapPage";
import { ModelsPage } from "./pages/Models";
import { OverviewPage } from "./pages/Overview";
import { PasswordPage } from "./pages/Password";
import { RulesPage } from "./pages/Rules";
import { SystemPage } from "./pages/System";

const NAV = [
  { to: "/", label: "Overview", end: true },
  { to: "/incidents", label: "Incidents" },
  { to: "/alerts", label: "Alerts" },
  { to: "/map", label: "Map" },
  { to: "/graph", label: "Graph explorer" },
  { to: "/rules", label: "Rules" },
  { to: "/models", label: "Models" },
  { to: "/system", label: "System" },
];

function LiveIndicator() {
  const state = useLiveState();
  const words = { open: "Live", connecting: "Connecting…", closed: "Offline, retrying" }[state];
  return (
    <div className="whoami" role="status" aria-live="polite" data-testid="live-state" data-state={state}>
      <span className={`live-dot ${state}`} aria-hidden="true" />
      {words}
    </div>
  );
}

function Shell() {
  const { user, signOut } = useAuth();
  if (!user) return null;
  if (user.must_change_password) return <PasswordPage />;
  return (
    <LiveProvider>
      <div className="shell">
        <nav className="sidebar" aria-label="Main">
          <div className="brand">
            FinSecure Nexus<small>Security &amp; fraud operations</small>
          </div>
          {NAV.map((item) => (
            <NavLink key={item.to} to={item.to} end={item.end} className="nav">
              {item.label}
            </NavLink>
          ))}
          <div className="spacer" />
          <LiveIndicator />
          <div className="whoami" data-testid="whoami">
            {user.full_name || user.username} · {user.role}
          </div>
          <button type="button" onClick={() => void signOut()}>
            Sign out
          </button>
        </nav>
        <main>
          <Routes>
            <Route path="/" element={<OverviewPage />} />
            <Route path="/incidents" element={<IncidentsPage />} />
            <Route path="/incidents/:id" element={<IncidentDetailPage />} />
            <Route path="/alerts" element={<AlertsPage />} />
            <Route path="/map" element={<MapPage />} />
            <Route path="/graph" element={<GraphPage />} />
            <Route path="/rules" element={<RulesPage />} />
            <Route path="/models" element={<ModelsPage />} />
            <Route path="/system" element={<SystemPage />} />
            <Route path="*" element={<Navigate to="/" replace />} />
          </Routes>
        </main>
      </div>
    </LiveProvider>
  );
}

export function App() {
  const { user, loading } = useAuth();
  if (loading) return <p className="muted" style={{ padding: 24 }}>Loading…</p>;
  return user ? <Shell /> : <LoginPage />;
}
