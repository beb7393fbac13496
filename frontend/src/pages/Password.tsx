import { useState, type FormEvent } from "react";
import { api, ApiError } from "../api/client";
import { useAuth } from "../auth";

/** Shown instead of the dashboard while the user still has a one-time password. */
export function PasswordPage() {
  const { reload, signOut } = useAuth();
  const [current, setCurrent] = useState("");
  const [next, setNext] = useState("");
  const [error, setError] = useState<string | null>(null);

  async function submit(event: FormEvent) {
    event.preventDefault();
    setError(null);
    try {
      await api("/api/auth/password", { method: "POST", json: { current_password: current, new_password: next } });
      await reload();
    } catch (err) {
      setError(err instanceof ApiError ? err.message : "The server could not be reached");
    }
  }

  return (
    <div className="login card">
      <h1>Choose your password</h1>
      <p className="muted">You signed in with a one-time password. Pick your own to continue.</p>
      {error && <div className="error" role="alert">{error}</div>}
      <form onSubmit={(e) => void submit(e)}>
        <div>
          <label htmlFor="current">One-time password</label>
          <input id="current" type="password" value={current} onChange={(e) => setCurrent(e.target.value)} required />
        </div>
        <div>
          <label htmlFor="next">New password</label>
          <input id="next" type="password" minLength={12} value={next} onChange={(e) => setNext(e.target.value)} required />
        </div>
        <button className="primary" type="submit">Save and continue</button>
        <button type="button" onClick={() => void signOut()}>Sign out</button>
      </form>
    </div>
  );
}
