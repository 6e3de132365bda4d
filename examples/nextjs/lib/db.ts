// Two pools, made once per server process: writes go to the primary, page reads to the replica.
import { Pool } from "pg";
import { settings } from "./settings";

let pools: { primary: Pool; replica: Pool } | null = null;

function made(): { primary: Pool; replica: Pool } {
  pools ??= {
    primary: new Pool({ connectionString: settings().writeDsn, max: 8 }),
    replica: new Pool({ connectionString: settings().readDsn, max: 8 }),
  };
  return pools;
}

export const primary = () => made().primary;
export const replica = () => made().replica;

export interface Card {
  id: number;
  board_id: number;
  tenant_id: number;
  title: string;
  status: string;
  version: number;
}

export interface Board {
  id: number;
  tenant_id: number;
  name: string;
  cards: Card[];
}

export const CARD_FIELDS = "id::int, board_id::int, tenant_id, title, status, version";
