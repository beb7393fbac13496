import { describe, expect, it } from "vitest";
import { CLOSE_TOKEN_EXPIRED, LiveSocket, liveUrl } from "./socket";

class FakeSocket {
  readyState = 0;
  sent: unknown[] = [];
  onopen: ((ev: Event) => void) | null = null;
  onmessage: ((ev: MessageEvent) => void) | null = null;
  onclose: ((ev: CloseEvent) => void) | null = null;
  onerror: ((ev: Event) => void) | null = null;
  send(data: string) {
    this.sent.push(JSON.parse(data));
  }
  close() {}
  open() {
    this.readyState = 1;
    this.onopen?.(new Event("open"));
  }
  receive(message: unknown) {
    this.onmessage?.({ data: JSON.stringify(message) } as MessageEvent);
  }
  drop(code: number) {
    this.readyState = 3;
    this.onclose?.({ code } as CloseEvent);
  }
}

const tick = () => new Promise((r) => setTimeout(r, 0));

function harness() {
  const sockets: FakeSocket[] = [];
  const timers: { fn: () => void; ms: number }[] = [];
  const tokens: boolean[] = [];
  const live = new LiveSocket({
    url: "ws://test/ws",
    token: async (force) => {
      tokens.push(force);
      return force ? "fresh-token" : "token";
    },
    createSocket: () => {
      const s = new FakeSocket();
      sockets.push(s);
      return s;
    },
    random: () => 1,
    setTimer: (fn, ms) => timers.push({ fn, ms }),
    clearTimer: () => undefined,
  });
  return { live, sockets, timers, tokens };
}

describe("LiveSocket", () => {
  it("authenticates first, then subscribes the channels pages listen to, and delivers messages", async () => {
    const { live, sockets } = harness();
    const got: unknown[] = [];
    live.subscribe("kpi", (d) => got.push(d));
    live.start();
    await tick();
    const socket = sockets[0]!;
    socket.open();
    expect(socket.sent).toEqual([{ type: "auth", token: "token" }]);
    socket.receive({ type: "welcome", role: "viewer", channels: ["kpi"] });
    expect(socket.sent[1]).toEqual({ type: "subscribe", channels: ["kpi"] });
    expect(live.state).toBe("open");
    socket.receive({ type: "message", channel: "kpi", data: { n: 1 } });
    socket.receive({ type: "message", channel: "alerts", data: { n: 2 } });
    expect(got).toEqual([{ n: 1 }]);
    const stop = live.subscribe("alerts", () => undefined);
    expect(socket.sent[2]).toEqual({ type: "subscribe", channels: ["alerts"] });
    stop();
    expect(socket.sent[3]).toEqual({ type: "unsubscribe", channels: ["alerts"] });
  });

  it("reconnects with growing delays after drops, and resets after a welcome", async () => {
    const { live, sockets, timers } = harness();
    live.start();
    await tick();
    sockets[0]!.drop(1006);
    sockets.length = 0;
    expect(live.state).toBe("closed");
    expect(timers.map((t) => t.ms)).toEqual([500]);
    timers[0]!.fn();
    await tick();
    sockets[0]!.drop(1013);
    expect(timers.map((t) => t.ms)).toEqual([500, 1000]);
    timers[1]!.fn();
    await tick();
    sockets[1]!.open();
    sockets[1]!.receive({ type: "welcome", role: "viewer" });
    expect(live.attempts).toBe(0);
  });

  it("refreshes the token at once when the server says it expired", async () => {
    const { live, sockets, timers, tokens } = harness();
    live.start();
    await tick();
    sockets[0]!.open();
    sockets[0]!.receive({ type: "welcome", role: "admin" });
    sockets[0]!.drop(CLOSE_TOKEN_EXPIRED);
    expect(timers.at(-1)?.ms).toBe(0);
    timers.at(-1)!.fn();
    await tick();
    expect(tokens).toEqual([false, true]);
    sockets[1]!.open();
    expect(sockets[1]!.sent[0]).toEqual({ type: "auth", token: "fresh-token" });
    live.stop();
    expect(live.state).toBe("closed");
  });

  it("builds the socket address from the page's", () => {
    expect(liveUrl({ protocol: "https:", host: "soc.bank:443" })).toBe("wss://soc.bank:443/ws");
    expect(liveUrl({ protocol: "http:", host: "127.0.0.1:8000" })).toBe("ws://127.0.0.1:8000/ws");
  });
});
