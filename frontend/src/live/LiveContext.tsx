import { createContext, useContext, useEffect, useRef, useState, type ReactNode } from "react";
import { accessToken, refreshTokens } from "../api/client";
import { LiveSocket, liveUrl, type Handler, type LiveState } from "./socket";

const LiveContext = createContext<LiveSocket | null>(null);

/** One live connection for the signed-in tab. */
export function LiveProvider({ children }: { children: ReactNode }) {
  const [socket] = useState(
    () =>
      new LiveSocket({
        url: liveUrl(window.location),
        token: async (force) => (force ? ((await refreshTokens())?.access ?? null) : accessToken()),
      }),
  );
  useEffect(() => {
    socket.start();
    return () => socket.stop();
  }, [socket]);
  return <LiveContext.Provider value={socket}>{children}</LiveContext.Provider>;
}

export function useLiveSocket(): LiveSocket | null {
  return useContext(LiveContext);
}

/** Call `handler` for each message on `channel` while the component is shown. */
export function useLive(channel: string, handler: Handler): void {
  const socket = useLiveSocket();
  const ref = useRef(handler);
  ref.current = handler;
  useEffect(() => {
    if (!socket) return;
    return socket.subscribe(channel, (data) => ref.current(data));
  }, [socket, channel]);
}

/** Call `handler` each time the live connection (re)opens: reload what may have been missed. */
export function useLiveReopen(handler: () => void): void {
  const socket = useLiveSocket();
  const ref = useRef(handler);
  ref.current = handler;
  useEffect(() => {
    if (!socket) return;
    return socket.onOpen(() => ref.current());
  }, [socket]);
}

export function useLiveState(): LiveState {
  const socket = useLiveSocket();
  const [state, setState] = useState<LiveState>(socket?.state ?? "closed");
  useEffect(() => (socket ? socket.onState(setState) : undefined), [socket]);
  return state;
}
