-- The demo's schema: a multi-tenant kanban board. Safe to apply on every start.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app') THEN
    CREATE ROLE app LOGIN PASSWORD 'app';
  END IF;
  -- Debezium's role: replication, and read access for schema discovery; owns nothing.
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'freshwire_cdc') THEN
    CREATE ROLE freshwire_cdc LOGIN REPLICATION PASSWORD 'freshwire_cdc';
  END IF;
END $$;

GRANT ALL ON SCHEMA public TO app;
GRANT USAGE ON SCHEMA public TO freshwire_cdc;
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;

CREATE TABLE IF NOT EXISTS boards (
  id        bigserial PRIMARY KEY,
  tenant_id int  NOT NULL,
  name      text NOT NULL
);

CREATE TABLE IF NOT EXISTS cards (
  id         bigserial PRIMARY KEY,
  tenant_id  int    NOT NULL,
  board_id   bigint NOT NULL REFERENCES boards (id),
  title      text   NOT NULL,
  status     text   NOT NULL DEFAULT 'todo',
  owner      text,
  version    int    NOT NULL DEFAULT 1,
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- Domain events written in the same transaction as the change they describe.
CREATE TABLE IF NOT EXISTS outbox (
  id            bigserial PRIMARY KEY,
  aggregatetype text  NOT NULL,
  aggregateid   text  NOT NULL,
  type          text  NOT NULL,
  payload       jsonb NOT NULL DEFAULT '{}'::jsonb,
  keys          text[]
);

-- The demo app's idempotency keys: a retried POST returns the stored response, never applies twice.
CREATE TABLE IF NOT EXISTS idempotency_keys (
  key        text PRIMARY KEY,
  response   jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);

-- The chaos harness's table (bench/chaos.py): rows that move between parents, get deleted, truncated.
CREATE TABLE IF NOT EXISTS chaos_items (
  id        int  PRIMARY KEY,
  tenant_id int  NOT NULL,
  parent_id int  NOT NULL,
  val       text NOT NULL
);

-- Documents with large values (tests of big rows): `body` is read by the rules, `meta` is not.
CREATE TABLE IF NOT EXISTS documents (
  id        bigserial PRIMARY KEY,
  tenant_id int   NOT NULL,
  title     text  NOT NULL,
  body      text  NOT NULL DEFAULT '',
  meta      jsonb NOT NULL DEFAULT '{}'::jsonb
);

-- Rows keyed by text with any characters (keys are encoded: docs/cdc.md), and a table without a
-- primary key: captured with REPLICA IDENTITY FULL, so its UPDATEs and DELETEs keep working.
CREATE TABLE IF NOT EXISTS probe_text (
  id  text PRIMARY KEY,
  val text
);
CREATE TABLE IF NOT EXISTS events_log (
  tenant_id int  NOT NULL,
  kind      text NOT NULL,
  at        timestamptz NOT NULL DEFAULT now()
);

-- Written by Debezium's heartbeat action query so positions move on a quiet database.
CREATE TABLE IF NOT EXISTS freshwire_heartbeat (
  id      int PRIMARY KEY,
  beat_at timestamptz NOT NULL
);

-- Old row images on every update and delete, so a card moving between boards invalidates both.
ALTER TABLE boards REPLICA IDENTITY FULL;
ALTER TABLE cards REPLICA IDENTITY FULL;
ALTER TABLE outbox REPLICA IDENTITY FULL;
ALTER TABLE chaos_items REPLICA IDENTITY FULL;
ALTER TABLE documents REPLICA IDENTITY FULL;
ALTER TABLE events_log REPLICA IDENTITY FULL;

ALTER TABLE boards OWNER TO app;
ALTER TABLE cards OWNER TO app;
ALTER TABLE outbox OWNER TO app;
ALTER TABLE idempotency_keys OWNER TO app;
ALTER TABLE chaos_items OWNER TO app;
ALTER TABLE documents OWNER TO app;
ALTER TABLE probe_text OWNER TO app;
ALTER TABLE events_log OWNER TO app;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO freshwire_cdc;
GRANT SELECT, INSERT, UPDATE ON freshwire_heartbeat TO freshwire_cdc;
ALTER DEFAULT PRIVILEGES FOR ROLE app IN SCHEMA public GRANT SELECT ON TABLES TO freshwire_cdc;

-- The publication is not created here: it follows the rules file (connectors/publication.py),
-- never FOR ALL TABLES, which would refuse UPDATEs and DELETEs of tables without a primary key.

INSERT INTO boards (id, tenant_id, name) VALUES (1, 1, 'Launch'), (2, 2, 'Roadmap')
  ON CONFLICT (id) DO NOTHING;
SELECT setval('boards_id_seq', GREATEST((SELECT max(id) FROM boards), 1));
INSERT INTO cards (id, tenant_id, board_id, title, status, owner) VALUES
  (1, 1, 1, 'Write the launch post', 'todo', 'ada'),
  (2, 1, 1, 'Load test the gateway', 'doing', 'grace'),
  (3, 2, 2, 'Plan Q3', 'todo', 'linus')
  ON CONFLICT (id) DO NOTHING;
SELECT setval('cards_id_seq', GREATEST((SELECT max(id) FROM cards), 1));
