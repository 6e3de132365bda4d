"""What Debezium captures, derived from the rules file: the rule tables, and in them only the
columns the rules read. Pure: Rules in, connector settings out.

Records then stay small by construction: a 5 MB document in a column no rule reads never leaves
Connect (Debezium drops it from the before and after images), so neither the Kafka record nor the
consumer ever sees it. Without a rules file every table and column is captured (default rules).
"""

from __future__ import annotations

import re

from cdc.errors import RulesError
from cdc.rules import OUTBOX_ID, OUTBOX_KEYS, OUTBOX_TYPE, Rules, TableRule

# Debezium splits include lists at commas and matches each entry as a Java regex against the whole
# "schema.table[.column]" name; plain identifiers need no quoting beyond the dots.
PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


def needed_columns(rule: TableRule) -> tuple[str, ...]:
    """The columns a rule reads: template placeholders, `columns`, `payload`, and the outbox columns."""
    found: dict[str, None] = {}
    for template in rule.templates:
        found.update(dict.fromkeys(template.fields))
    found.update(dict.fromkeys(sorted(rule.columns or ())))
    found.update(dict.fromkeys(rule.payload))
    if rule.outbox:
        found.update(dict.fromkeys((OUTBOX_KEYS, OUTBOX_TYPE, OUTBOX_ID)))
    return tuple(found)


def _plain(table: str, *names: str) -> str:
    for name in names:
        if not PLAIN.match(name):
            raise RulesError(f"table {table}: {name!r} is not a plain identifier; Debezium's include lists "
                             "need one (letters, digits, _ and $)")
    return r"\.".join(names)


def capture_settings(rules: Rules) -> dict[str, str]:
    """table.include.list and column.include.list for the connector ({} without rules: capture all).

    A table whose rule reads no column (a heartbeat, bookkeeping) keeps its rows' events with empty
    images: they still move the watermark and count toward END's event count.
    """
    if not rules.tables:
        return {}
    tables, columns = [], []
    for qualified, rule in sorted(rules.tables.items()):
        schema, _, table = qualified.partition(".")
        tables.append(_plain(qualified, schema, table))
        cols = needed_columns(rule)
        if cols:
            for col in cols:
                _plain(qualified, col)
            columns.append(_plain(qualified, schema, table) + r"\.(" + "|".join(cols) + ")")
    settings = {"table.include.list": ",".join(tables)}
    if columns:
        settings["column.include.list"] = ",".join(columns)
    return settings
