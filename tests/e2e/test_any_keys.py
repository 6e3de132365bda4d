"""Keys from values with any characters, and a table without a primary key, through the real stack
(#11 bug 9, #18): every key the consumer emits can be subscribed and read over HTTP, built by the
client from the same values; a table without a primary key stays writable and is invalidated."""

from __future__ import annotations

import functools
import json
import urllib.parse
import urllib.request

from connectors.stack_settings import StackSettings
from contract.keys import key_for, valid_key
from tests.e2e.helpers import client, next_id, token, until, write

ODD = ["José Ñ,x*", "a:b/c=d 100%", "tab\there 🙂", "plain-1"]


async def test_any_keys_text_values_are_subscribable_and_readable(stack_settings: StackSettings) -> None:
    s = stack_settings
    run = str(next_id(s, "boards"))
    ids = [f"{run}:{value}" for value in ODD]
    keys = [key_for("probe_text:{id}", {"id": i}) for i in ids]
    assert all(valid_key(k) for k in keys)
    async with client(s, ["probe_text:*"]) as c:
        await c.subscribe(keys)
        for i in ids:
            write(s, "INSERT INTO probe_text (id, val) VALUES (%s, 'v')", (i,))
        _tx, inside, after = write(s, "UPDATE probe_text SET val = 'w' WHERE id = ANY(%s)", (ids,))
        await until(lambda: all(inside < (c.versions.get(k) or "") <= after for k in keys), 20,
                    what="every text key at the update's version")
    query = urllib.parse.quote(",".join(keys), safe="")
    req = urllib.request.Request(f"{s.gateway_url}/v1/versions?keys={query}",
                                 headers={"Authorization": f"Bearer {token(['probe_text:*'])}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        versions = json.load(r)["versions"]
    assert set(versions) == set(keys) and all(inside < v <= after for v in versions.values())


def _between(versions: dict[str, str | None], key: str, low: str, high: str) -> bool:
    return low < (versions.get(key) or "") <= high


async def test_any_keys_table_without_primary_key_is_writable_and_invalidated(stack_settings: StackSettings) -> None:
    s = stack_settings
    tenant = 5000 + next_id(s, "boards")
    key = f"tenant:{tenant}:events"
    async with client(s, ["tenant:*"]) as c:
        await c.subscribe([key])
        for sql in ("INSERT INTO events_log (tenant_id, kind) VALUES (%s, 'a'), (%s, 'b')",
                    "UPDATE events_log SET kind = 'c' WHERE tenant_id = %s AND kind = 'a'",
                    "DELETE FROM events_log WHERE tenant_id = %s"):
            params = (tenant, tenant) if sql.startswith("INSERT") else (tenant,)
            _tx, inside, after = write(s, sql, params)  # an UPDATE or DELETE refused by PostgreSQL raises here
            await until(functools.partial(_between, c.versions, key, inside, after), 20, what=sql.split()[0])
