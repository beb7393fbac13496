// One authenticated WebSocket per tab, shared by every page: channels are subscribed while some page
// listens to them, and the connection comes back by itself (with backoff) after any drop.
import { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from "../lib/backoff";

export type LiveState = "connecting" | "open" | "closed";
export type Handler = (data: Record<string, unknown>) => void;

interface SocketLike {
  readyState: number;
  onopen: ((ev: Event) => void) | null;
  onmessage: ((ev: MessageEvent) => void) | null;
  onclose: ((ev: CloseEvent) => void) | null;
  onerror: ((ev: Event) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export interface LiveSocketOptions {
  url: string;
  /** A fresh access token (refreshing it when needed), or null when signed out. */
  token: (forceRefresh: boolean) => Promise<string | null>;
  createSocket?: (url: string) => SocketLike;
  backoff?: BackoffOptions;
  random?: () => number;
  setTimer?: (fn: () => void, ms: number) => unknown;
  clearTimer?: (handle: unknown) => void;
}

const OPEN = 1;
export const CLOSE_POLICY = 1008;
export const CLOSE_TOO_SLOW = 1013;
export const CLOSE_TOKEN_EXPIRED = 4401;

export function liveUrl(location: { protocol: string; host: string }): string {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
}

export class LiveSocket {
  state: LiveState = "closed";
  role: string | null = null;
  attempts = 0;
  private socket: SocketLike | null = null;
  private handlers = new Map<string, Set<Handler>>();
  private stateListeners = new Set<(state: LiveState) => void>();
  private openListeners = new Set<() => void>();
  private timer: unknown = null;
  private stopped = true;
  private authenticated = false;
  private refreshNext = false;
  private readonly opts: Required<Omit<LiveSocketOptions, "createSocket">> &
    Pick<LiveSocketOptions, "createSocket">;

  constructor(options: LiveSocketOptions) {
    this.opts = {
      backoff: DEFAULT_BACKOFF,
      random: Math.random,
      setTimer: (fn, ms) => setTimeout(fn, ms),
      clearTimer: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
      ...options,
    };
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    void this.connect();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer !== null) this.opts.clearTimer(this.timer);
    this.timer = null;
    this.socket?.close(1000, "signed out");
    this.socket = null;
    this.setState("closed");
  }

  /** Listen to a channel; returns the function that stops listening. */
  subscribe(channel: string, handler: Handler): () => void {
    let set = this.handlers.get(channel);
    if (!set) {
      set = new Set();
      this.handlers.set(channel, set);
      this.send({ type: "subscribe", channels: [channel] });
    }
    set.add(handler);
    return () => {
      const current = this.handlers.get(channel);
      if (!current) return;
      current.delete(handler);
      if (current.size === 0) {
        this.handlers.delete(channel);
        this.send({ type: "unsubscribe", channels: [channel] });
      }
    };
  }

  /** Be told of state changes; returns the unsubscribe function. */
  onState(listener: (state: LiveState) => void): () => void {
    this.stateListeners.add(listener);
    return () => this.stateListeners.delete(listener);
  }

  /** Be told each time the connection is (re)established, to reload what may have been missed. */
  onOpen(listener: () => void): () => void {
    this.openListeners.add(listener);
    return () => this.openListeners.delete(listener);
  }

  private setState(state: LiveState): void {
    this.state = state;
    this.stateListeners.forEach((l) => l(state));
  }

  private send(message: unknown): void {
    if (this.socket && this.socket.readyState === OPEN && this.authenticated) {
      this.socket.send(JSON.stringify(message));
    }
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    this.setState("connecting");
    const token = await this.opts.token(this.refreshNext);
    this.refreshNext = false;
    if (this.stopped) return;
    if (!token) {
      this.scheduleReconnect();
      return;
    }
    const create = this.opts.createSocket ?? ((url: string) => new WebSocket(url, ["finsecure.v1"]));
    const socket = create(this.opts.url);
    this.socket = socket;
    this.authenticated = false;
    socket.onopen = () => socket.send(JSON.stringify({ type: "auth", token }));
    socket.onmessage = (event) => this.receive(String(event.data));
    socket.onerror = () => undefined; // onclose follows and decides what to do
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.authenticated = false;
      if (event.code === CLOSE_TOKEN_EXPIRED || event.code === CLOSE_POLICY) this.refreshNext = true;
      this.setState("closed");
      if (event.code === CLOSE_TOKEN_EXPIRED) {
        this.attempts = 0;
        this.timer = this.opts.setTimer(() => void this.connect(), 0);
      } else {
        this.scheduleReconnect();
      }
    };
  }

  private scheduleReconnect(): void {
    if (this.stopped) return;
    const delay = backoffDelay(this.attempts, this.opts.backoff, this.opts.random);
    this.attempts += 1;
    this.timer = this.opts.setTimer(() => {
      this.timer = null;
      void this.connect();
    }, delay);
  }

  private receive(text: string): void {
    let message: Record<string, unknown>;
    try {
      message = JSON.parse(text) as Record<string, unknown>;
    } catch {
      return;
    }
    if (message.type === "welcome") {
      this.authenticated = true;
      this.attempts = 0;
      this.role = typeof message.role === "string" ? message.role : null;
      const channels = [...this.handlers.keys()];
      if (channels.length) this.send({ type: "subscribe", channels });
      this.setState("open");
      this.openListeners.forEach((l) => l());
    } else if (message.type === "message" && typeof message.channel === "string") {
      const data = (message.data ?? {}) as Record<string, unknown>;
      this.handlers.get(message.channel)?.forEach((h) => h(data));
    }
  }
}
