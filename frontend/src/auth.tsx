// Who is signed in, and the actions to sign in and out. The role only shapes the UI: the API decides.
import { createContext, useCallback, useContext, useEffect, useMemo, useState, type ReactNode } from "react";
import { api, ApiError, onSignedOut, tokenStore } from "./api/client";
import type { Role, TokenPair, User } from "./api/types";

interface AuthValue {
  user: User | null;
  loading: boolean;
  signIn: (username: string, password: string) => Promise<void>;
  signOut: () => Promise<void>;
  reload: () => Promise<void>;
}

const AuthContext = createContext<AuthValue | null>(null);

const RANK: Record<Role, number> = { viewer: 0, analyst: 1, admin: 2 };

/** True when `role` may do what `least` may do. */
export function roleIncludes(role: Role | undefined | null, least: Role): boolean {
  return role != null && RANK[role] >= RANK[least];
}

export function AuthProvider({ children }: { children: ReactNode }) {
  const [user, setUser] = useState<User | null>(null);
  const [loading, setLoading] = useState(true);

  const reload = useCallback(async () => {
    if (!tokenStore.get()) {
      setUser(null);
      setLoading(false);
      return;
    }
    try {
      setUser(await api<User>("/api/auth/me"));
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) tokenStore.clear();
      setUser(null);
    } finally {
      setLoading(false);
    }
  }, []);

  useEffect(() => {
    void reload();
    return onSignedOut(() => setUser(null));
  }, [reload]);

  const signIn = useCallback(
    async (username: string, password: string) => {
      const pair = await api<TokenPair>("/api/auth/token", {
        method: "POST",
        form: { username, password, grant_type: "password" },
      });
      tokenStore.set(pair);
      await reload();
    },
    [reload],
  );

  const signOut = useCallback(async () => {
    const tokens = tokenStore.get();
    if (tokens) {
      try {
        await api("/api/auth/logout", { method: "POST", json: { refresh_token: tokens.refresh } });
      } catch {
        // signing out locally is what matters; the refresh token expires anyway
      }
    }
    tokenStore.clear();
    setUser(null);
  }, []);

  const value = useMemo(() => ({ user, loading, signIn, signOut, reload }), [user, loading, signIn, signOut, reload]);
  return <AuthContext.Provider value={value}>{children}</AuthContext.Provider>;
}

export function useAuth(): AuthValue {
  const value = useContext(AuthContext);
  if (!value) throw new Error("useAuth outside AuthProvider");
  return value;
}

/** Renders its children only for `least` and the roles above it. */
export function RoleGate({ least, children }: { least: Role; children: ReactNode }) {
  const { user } = useAuth();
  return roleIncludes(user?.role, least) ? <>{children}</> : null;
}
