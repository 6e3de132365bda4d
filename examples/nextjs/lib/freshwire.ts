// The three server calls, configured once (docs/nextjs.md).
import { createFreshwire, mintToken, type Freshwire } from "@freshwire/next/server";
import { settings } from "./settings";

let made: Freshwire | null = null;

export function freshwire(): Freshwire {
  made ??= createFreshwire({
    gatewayUrl: settings().gatewayUrl,
    jwtSecret: settings().jwtSecret,   // mints the server credential /v1/wait and /v1/versions accept
    timeoutMs: 5000,
    onTimeout: (r) => console.warn(`freshwire: ${r.token} not visible after ${r.waitedMs} ms (${r.code})`),
  });
  return made;
}

/** The keys a tenant's browser may subscribe (a real app derives them from the signed-in user). */
export function browserToken(tenantId: number, user: string): string {
  return mintToken(settings().jwtSecret, { subject: user, keys: [`tenant:${tenantId}:*`], ttlS: 3600 });
}

export const boardKey = (tenantId: number, boardId: number) => `tenant:${tenantId}:board:${boardId}`;
export const cardKey = (tenantId: number, cardId: number) => `tenant:${tenantId}:card:${cardId}`;
