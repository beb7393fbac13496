// Reconnect delays: exponential, capped, with "full jitter" so a server restart is not hit by every
// dashboard at the same instant.

export interface BackoffOptions {
  baseMs: number;
  maxMs: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { baseMs: 500, maxMs: 30_000 };

/** Delay before reconnect attempt number `attempt` (0 for the first retry). */
export function backoffDelay(
  attempt: number,
  options: BackoffOptions = DEFAULT_BACKOFF,
  random: () => number = Math.random,
): number {
  const ceiling = Math.min(options.maxMs, options.baseMs * 2 ** Math.max(0, Math.min(attempt, 30)));
  // Never below half the ceiling, so retries still spread out as attempts grow.
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}
