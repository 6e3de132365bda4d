// The cache-purge sink's webhook (python -m clients.sink, docs/sink.md): FRESHWIRE_SINK_URL points here.
import { createPurgeHandler } from "@freshwire/next/route";

export const runtime = "nodejs";
export const dynamic = "force-dynamic";

const secret = process.env.FRESHWIRE_SINK_SECRET ?? "";
const handler = secret ? createPurgeHandler({ secret }) : null;

export async function POST(request: Request): Promise<Response> {
  if (handler === null) return Response.json({ error: { code: "not_configured", message: "FRESHWIRE_SINK_SECRET is not set" } }, { status: 404 });
  return handler(request);
}
