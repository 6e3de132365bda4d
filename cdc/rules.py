"""Invalidation rules: which cache keys a row change invalidates.

Declared in a TOML file (see docs/cdc.md), validated once at start. Pure: a RowChange in, the keys
and key prefixes it invalidates out.

Guarantee: a change never leaves a subscriber believing stale data is fresh. When a template cannot
be rendered from a row image that exists (the column is missing, e.g. a delete's before image without
REPLICA IDENTITY FULL), the template's literal prefix is invalidated instead; a truncate invalidates
the prefixes of all of its table's templates.
"""

from __future__ import annotations

import json
import re
import string
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdc.errors import RulesError
from cdc.model import Row, RowChange
from contract.keys import KEY_RE, MAX_KEY_LENGTH, encode_key, encode_value

IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
OUTBOX_KEYS, OUTBOX_TYPE, OUTBOX_ID = "keys", "aggregatetype", "aggregateid"
TABLE_KEYS = frozenset({"keys", "columns", "outbox", "payload"})
# What Debezium sends in place of a value it does not have (an unchanged TOASTed column), as text and as
# base64 bytes (binary.handling.mode=bytes): a payload never carries it.
UNAVAILABLE = "__debezium_unavailable_value"
UNAVAILABLE_VALUES = frozenset({UNAVAILABLE, "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ=="})


@dataclass(frozen=True, slots=True)
class Template:
    text: str
    fields: tuple[str, ...]
    # The literal text around the placeholders: literals[i] precedes fields[i], the last one ends it.
    literals: tuple[str, ...] = field(init=False, repr=False, compare=False)
    # parents[m] fully matches a key or prefix that keeps the first m fields (m = 1..len(fields)).
    parents: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    # (field, the literal after it), in order: what rendering walks.
    steps: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        literals: list[str] = []
        text = ""
        for literal, name, _spec, _conversion in string.Formatter().parse(self.text):
            text += literal
            if name is not None:
                literals.append(text)
                text = ""
        literals.append(text)
        object.__setattr__(self, "literals", tuple(literals))
        patterns = [re.compile(re.escape(literals[0]))]
        for m in range(1, len(literals)):
            body = "".join(f"(.*?){re.escape(lit)}" for lit in literals[1:m + 1])
            patterns.append(re.compile(re.escape(literals[0]) + body, re.DOTALL))
        object.__setattr__(self, "parents", tuple(patterns))
        object.__setattr__(self, "steps", tuple(zip(self.fields, literals[1:], strict=True)))

    @property
    def prefix(self) -> str:
        """The literal text before the first placeholder: every key this template renders starts with it.

        For a template without placeholders, the key itself. Escaped braces ({{, }}) count as one brace.
        """
        return self.literals[0]

    def render(self, row: Row) -> str | None:
        """The key for `row`; None when a field is null (the row has no such parent).

        Raises KeyError when a field is absent from the image.
        """
        return self.render_prefix(row, len(self.fields))

    def render_prefix(self, row: Row, keep: int) -> str | None:
        """The key's prefix that keeps its first `keep` fields and the literal after them (the whole key
        when `keep` is the number of fields). None when a kept field is null; KeyError when absent."""
        steps = self.steps if keep >= len(self.steps) else self.steps[:keep]
        if not steps:
            return self.literals[0]
        parts = [self.literals[0]]
        for name, literal in steps:
            value = row[name]
            if value is None:
                return None
            parts.append(str(value) if type(value) is int else encode_value(value))  # encode_value's own fast case
            parts.append(literal)
        return "".join(parts)

    def parent(self, text: str) -> str | None:
        """The prefix one field shorter than `text` (a key or prefix this template renders), or None
        when `text` is not one of its keys or prefixes or keeps no field already. Always a string
        prefix of `text`, so whatever lies under `text` lies under it too."""
        for m in range(len(self.parents) - 1, 0, -1):
            match = self.parents[m].fullmatch(text)
            if match is not None and match.start(m) < len(text):
                return text[:match.start(m)]
        return None


@dataclass(frozen=True, slots=True)
class TableRule:
    templates: tuple[Template, ...]
    columns: frozenset[str] | None = None
    outbox: bool = False
    # Columns an `invalidate` carries for the row's own keys (docs/cdc.md "Payload"); () sends none.
    payload: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Invalidation:
    keys: tuple[str, ...]
    prefixes: tuple[str, ...]
    # (row key, the payload columns' new values as compact JSON; "null" for a delete). Only keys listed
    # in `keys`, only for rules with `payload`, never for degraded (depth > 0) changes. Equality is about
    # what is invalidated: the data and the reasons below do not count.
    data: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    # (row key, reason) for the row keys of a payload rule that go without data: "unavailable" (a payload
    # column was not sent: an unchanged TOASTed value), "moved" (only the old image renders it).
    without: tuple[tuple[str, str], ...] = field(default=(), compare=False)


NOTHING = Invalidation((), ())


def parse_template(table: str, text: Any) -> Template:
    if not isinstance(text, str) or not text:
        raise RulesError(f"table {table}: template {text!r} must be a non-empty string")
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise RulesError(f"table {table}: template {text!r}: {exc}") from None
    fields = []
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if not IDENT.match(name) or spec or conversion:
            raise RulesError(f"table {table}: template {text!r}: placeholder {{{name}}} must be a plain column name")
        fields.append(name)
    if any(c.isspace() for c in text):
        raise RulesError(f"table {table}: template {text!r} must not contain white space")
    template = Template(text, tuple(fields))
    literal = "".join(template.literals)
    if literal and not KEY_RE.match(literal):
        raise RulesError(f"table {table}: template {text!r}: outside the placeholders only A-Z a-z 0-9 "
                         "_ . : @ / + = - may appear (the protocol's key alphabet)")
    return template


def _table_rule(table: str, spec: Any) -> TableRule:
    if not isinstance(spec, dict):
        raise RulesError(f"table {table}: expected a table of settings")
    unknown = set(spec) - TABLE_KEYS
    if unknown:
        raise RulesError(f"table {table}: unknown setting(s) {sorted(unknown)}; known: {sorted(TABLE_KEYS)}")
    keys = spec.get("keys", [])
    if not isinstance(keys, list):
        raise RulesError(f"table {table}: keys must be a list of templates")
    columns = spec.get("columns")
    if columns is not None and (not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)):
        raise RulesError(f"table {table}: columns must be a list of column names")
    outbox = spec.get("outbox", False)
    if not isinstance(outbox, bool):
        raise RulesError(f"table {table}: outbox must be true or false")
    payload = spec.get("payload", [])
    if not isinstance(payload, list) or not all(isinstance(c, str) and IDENT.match(c) for c in payload):
        raise RulesError(f"table {table}: payload must be a list of plain column names")
    if payload and outbox:
        raise RulesError(f"table {table}: an outbox table carries no payload")
    templates = tuple(parse_template(table, t) for t in keys)
    # A template's own columns always count: a row moving to another parent changes its keys. So do
    # payload columns: a client holding them must hear when they change.
    read = None if columns is None else frozenset(columns).union(payload, *(t.fields for t in templates))
    return TableRule(templates=templates, columns=read, outbox=outbox, payload=tuple(dict.fromkeys(payload)))


# Default rules kept built (tables without rules, by their key columns); past this many, built afresh.
MAX_DEFAULT_RULES = 1024


@dataclass(frozen=True)
class Rules:
    tables: dict[str, TableRule]
    _defaults: dict[tuple[str, str, tuple[str, ...]], TableRule] = field(default_factory=dict, repr=False,
                                                                           compare=False)

    def for_change(self, change: RowChange, depth: int = 0) -> Invalidation:
        """The keys and prefixes `change` invalidates. With `depth` > 0 (a transaction too large to carry
        key by key, see cdc/keyset.py) each templated key is replaced by its prefix without its last
        `depth` fields, and each outbox key by its prefix `depth` colon-separated parts shorter."""
        rule = self.tables.get(change.qualified) or self._default_rule(change)
        if rule.outbox:
            return _narrowed(_outbox_keys(change), depth)
        if change.op == "t":
            return _truncate(rule)
        if change.op == "u" and not _relevant_update(rule, change):
            return NOTHING
        keys: dict[str, None] = {}
        prefixes: dict[str, None] = {}
        payload = bool(rule.payload) and depth == 0 and change.op in ("c", "u", "r", "d")
        # Whole keys rendered here, by (image, template), for the payload to reuse (None: absent or null).
        rendered: dict[tuple[int, int], str | None] = {}
        old = _without_unsent_columns(change)
        for image in (old, change.after):
            if image is None:
                continue
            for template in rule.templates:
                n = len(template.fields)
                keep = n if depth == 0 else max(0, n - depth)
                try:
                    key = template.render_prefix(image, keep)
                except KeyError:
                    if payload:
                        rendered[id(image), id(template)] = None
                    prefixes[template.prefix] = None
                    continue
                if payload:
                    rendered[id(image), id(template)] = key
                if key is None:
                    continue
                if keep == n and len(key) > MAX_KEY_LENGTH:
                    # No client can subscribe to a key this long: its parent prefix reaches the keys that can.
                    key, keep = self.parent(change.qualified, key), keep - 1
                (keys if keep == n else prefixes)[key] = None
        if payload:
            return _with_payload(rule, change, Invalidation(tuple(keys), tuple(prefixes)), old, rendered)
        return Invalidation(tuple(keys), tuple(prefixes))

    def _default_rule(self, change: RowChange) -> TableRule:
        """default_rule(change), built once per table and key columns (a few hundred at most)."""
        cache_key = (change.schema, change.table, tuple(change.key) if change.key else ())
        rule = self._defaults.get(cache_key)
        if rule is None:
            if len(self._defaults) >= MAX_DEFAULT_RULES:
                self._defaults.clear()
            rule = self._defaults[cache_key] = default_rule(change)
        return rule

    def for_missing(self, table: str) -> Invalidation:
        """Changes of `table` that never reached the stream (dropped by Connect, or dead-lettered):
        invalidate what a truncate of the table would."""
        rule = self.tables.get(table)
        if rule is None:
            schema, _, name = table.partition(".")
            rule = default_rule(RowChange(schema, name, "t", None, None, None, None, 0, 0))
        if rule.outbox:
            return Invalidation((), ("",))  # outbox keys are free-form: only everything covers them
        return _truncate(rule)

    def parent(self, table: str, text: str) -> str:
        """A strict string prefix of `text` (a key or prefix of `table`'s rule) one field shorter,
        or `text` itself when it cannot be shortened along a template (it is a template's literal
        prefix already). Keys no template of the table renders (outbox keys) are shortened at ':'."""
        rule = self.tables.get(table)
        best: str | None = None
        for template in rule.templates if rule is not None else ():
            if template.prefix == text:
                return text
            found = template.parent(text)
            if found is not None and len(found) < len(text) and (best is None or len(found) > len(best)):
                best = found
        return best if best is not None else colon_parent(text)


def row_templates(rule: TableRule, change: RowChange) -> tuple[Template, ...]:
    """The templates that name the changed row itself: those whose placeholders include every primary
    key column. Only their keys carry a payload (`board:{board_id}` is not the card's key)."""
    if not change.key:
        return ()
    pk = set(change.key)
    return tuple(t for t in rule.templates if pk <= set(t.fields))


def payload_of(rule: TableRule, change: RowChange) -> str | None:
    """The payload columns' new values as compact JSON ("null" for a delete); None when Debezium did not
    send one of them (absent, or its unavailable-value placeholder)."""
    if change.op == "d":
        return "null"
    after = change.after or {}
    values = {}
    for column in rule.payload:
        if column not in after or _unavailable(after[column]):
            return None
        values[column] = after[column]
    return _PAYLOAD_JSON.encode(values)


# What json.dumps(values, separators=(",", ":"), ensure_ascii=False) builds on every call, built once.
_PAYLOAD_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _unavailable(value: Any) -> bool:
    if isinstance(value, str):
        return value in UNAVAILABLE_VALUES
    if isinstance(value, list):
        return any(_unavailable(v) for v in value)
    return False


def _render(template: Template, image: Row, rendered: dict[tuple[int, int], str | None]) -> str | None:
    """template.render(image), None when a field is absent, taken from `rendered` when it is there."""
    found = rendered.get((id(image), id(template)), _UNSEEN)
    if found is not _UNSEEN:
        return found  # type: ignore[return-value]  # str | None
    try:
        return template.render(image)
    except KeyError:
        return None


_UNSEEN = object()


def _with_payload(rule: TableRule, change: RowChange, inv: Invalidation, old: Row | None,
                  rendered: dict[tuple[int, int], str | None]) -> Invalidation:
    """`inv` with the row's payload on the row's own keys, as rendered from the image the row now has
    (the after image; a delete's before image). A key only the old image renders (the row moved away
    from it) gets none: the client refetches it. `old` is _without_unsent_columns(change), and
    `rendered` the keys for_change rendered from these very images (by their identity)."""
    image = old if change.op == "d" else change.after
    if image is None:
        return inv
    seen = rendered
    text = payload_of(rule, change)
    own: dict[str, None] = {}
    templates = row_templates(rule, change)
    for template in templates:
        key = _render(template, image, seen)
        if key is not None and key in inv.keys:
            own[key] = None
    moved: dict[str, None] = {}
    if change.op == "u" and change.before is not None:
        for template in templates:
            key = _render(template, change.before, seen)
            if key is not None and key in inv.keys and key not in own:
                moved[key] = None
    without = tuple((key, "moved") for key in moved)
    if text is None:
        return Invalidation(inv.keys, inv.prefixes, without=tuple((key, "unavailable") for key in own) + without)
    return Invalidation(inv.keys, inv.prefixes, data=tuple((key, text) for key in own), without=without)


def _without_unsent_columns(change: RowChange) -> Row | None:
    """The before image, less the columns PostgreSQL did not send. Without REPLICA IDENTITY FULL a
    delete's old row holds only the key: Debezium sends every other column as null, not absent. Such an
    image (every non-key column null) keeps only its key columns, so templates over the others fall
    back to their literal prefix (more than needed, never stale) instead of rendering no key at all."""
    before = change.before
    if change.op != "d" or before is None or not change.key:
        return before
    others = [column for column in before if column not in change.key]
    if not others or any(before[column] is not None for column in others):
        return before
    return {column: value for column, value in before.items() if column in change.key}


def colon_parent(text: str) -> str:
    """The longest prefix of `text` that ends with ':' and is shorter than it; "" when there is none."""
    cut = text.rfind(":", 0, len(text) - 1)
    return text[:cut + 1] if cut >= 0 else ""


def _narrowed(inv: Invalidation, depth: int) -> Invalidation:
    if depth == 0 or not inv.keys:
        return inv
    prefixes: dict[str, None] = dict.fromkeys(inv.prefixes)
    for key in inv.keys:
        for _ in range(depth):
            key = colon_parent(key)
        prefixes[key] = None
    return Invalidation((), tuple(prefixes))


def default_name(change: RowChange) -> str:
    return change.table if change.schema == "public" else change.qualified


def default_rule(change: RowChange) -> TableRule:
    """Tables without rules: a row key `<table>:<pk>` (pk columns joined by ':') and a table key `<table>`."""
    name = encode_value(default_name(change))  # a quoted identifier may hold anything, braces too
    pk_fields = list(change.key) if change.key and all(IDENT.match(f) for f in change.key) else []
    row_template = f"{name}:" + ":".join(f"{{{f}}}" for f in pk_fields) if pk_fields else None
    templates = [Template(name, ())]
    if row_template is not None:
        templates.insert(0, Template(row_template, tuple(pk_fields)))
    else:
        templates.insert(0, Template(f"{name}:{{__pk}}", ("__pk",)))
    return TableRule(templates=tuple(templates))


def _truncate(rule: TableRule) -> Invalidation:
    keys = tuple(dict.fromkeys(t.prefix for t in rule.templates if not t.fields))
    prefixes = tuple(dict.fromkeys(t.prefix for t in rule.templates if t.fields))
    return Invalidation(keys, prefixes)


def _relevant_update(rule: TableRule, change: RowChange) -> bool:
    if rule.columns is None or change.before is None or change.after is None:
        return True
    for column in rule.columns:
        if column not in change.before or change.before.get(column) != change.after.get(column):
            return True
    return False


def _outbox_keys(change: RowChange) -> Invalidation:
    """An outbox row invalidates its `keys` column, or `<aggregatetype>:<aggregateid>`; only on insert."""
    row = change.after
    if change.op not in ("c", "r") or row is None:
        return NOTHING
    explicit = row.get(OUTBOX_KEYS)
    if isinstance(explicit, list) and explicit and all(isinstance(k, str) and k for k in explicit):
        return Invalidation(tuple(dict.fromkeys(encode_key(k) for k in explicit)), ())
    kind, ident = row.get(OUTBOX_TYPE), row.get(OUTBOX_ID)
    if kind is None or ident is None:
        return NOTHING
    return Invalidation((f"{encode_value(kind)}:{encode_value(ident)}",), ())


def parse_rules(doc: dict[str, Any]) -> Rules:
    unknown = set(doc) - {"tables"}
    if unknown:
        raise RulesError(f"unknown top-level setting(s) {sorted(unknown)}; expected [tables.\"schema.table\"]")
    tables = doc.get("tables", {})
    if not isinstance(tables, dict):
        raise RulesError("tables must be a table of \"schema.table\" entries")
    parsed = {}
    for name, spec in tables.items():
        if name.count(".") != 1:
            raise RulesError(f"table {name}: name must be schema-qualified, like \"public.{name}\"")
        parsed[name] = _table_rule(name, spec)
    return Rules(parsed)


def load_rules(path: Path | None) -> Rules:
    if path is None:
        return Rules({})
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise RulesError(f"cannot read rules file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"rules file {path} is not valid TOML: {exc}") from None
    return parse_rules(doc)


def union(parts: Iterable[Invalidation]) -> Invalidation:
    keys: dict[str, None] = {}
    prefixes: dict[str, None] = {}
    for part in parts:
        keys.update(dict.fromkeys(part.keys))
        prefixes.update(dict.fromkeys(part.prefixes))
    return Invalidation(tuple(keys), tuple(prefixes))
