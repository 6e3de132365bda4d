// Read once per server process, from the environment at the first request (connectors/nextjs.py sets them for the stack).

function need(name: string, fallback?: string): string {
  const value = process.env[name] ?? fallback;
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

export interface Settings {
  writeDsn: string; readDsn: string; gatewayUrl: string; gatewayWs: string;
  jwtSecret: string; sinkSecret: string; allowNoWait: boolean;
}

let loaded: Settings | null = null;

/** Loaded at the first request, not at build time (`next build` runs without them). */
export function settings(): Settings {
  loaded ??= {
    writeDsn: need("FRESHWIRE_WRITE_DSN", "postgresql://app:app@127.0.0.1:15432/app"),
    // Reading from a replica is only safe when the consumer gates releases on it (docs/consistency.md).
    readDsn: need("FRESHWIRE_READ_DSN", process.env.FRESHWIRE_WRITE_DSN ?? "postgresql://app:app@127.0.0.1:15432/app"),
    gatewayUrl: need("FRESHWIRE_GATEWAY_URL", "http://127.0.0.1:18080"),
    // The browser's view of the gateway (a proxy may put it elsewhere).
    gatewayWs: need("FRESHWIRE_GATEWAY_WS", "ws://127.0.0.1:18080/ws"),
    jwtSecret: need("FRESHWIRE_JWT_SECRET"),
    sinkSecret: process.env.FRESHWIRE_SINK_SECRET ?? "",
    // The control run of the browser test: lets ?wait=off skip the wait, to show the stale render it prevents.
    allowNoWait: process.env.FRESHWIRE_EXAMPLE_CONTROL === "1",
  };
  return loaded;
}
