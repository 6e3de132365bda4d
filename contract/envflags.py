"""Settings from FRESHWIRE_* environment variables mirrored by command-line flags, for any frozen
dataclass whose fields all have defaults of type str, int, float or bool. Flags win over the
environment; an empty variable counts as unset; a malformed value fails with the variable's name."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

T = TypeVar("T")


def env_name(prefix: str, field_name: str) -> str:
    return prefix + field_name.upper()


def _coerce(kind: type, raw: str, name: str, error: type[Exception]) -> object:
    if kind is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise error(f"{name} must be true or false, got {raw!r}")
    try:
        return kind(raw)
    except ValueError:
        raise error(f"{name} must be {kind.__name__}, got {raw!r}") from None


def parser_for(cls: type[Any], prefix: str, help: Mapping[str, str], prog: str, description: str,
               hidden_defaults: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for f in fields(cls):
        default = "(none)" if f.name in hidden_defaults else repr(f.default)
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                            help=f"{help[f.name]} (env {env_name(prefix, f.name)}, default {default})")
    return parser


def values(cls: type[Any], prefix: str, raw: Mapping[str, str | None], error: type[Exception],
           environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """Each field's value from `raw` (flags) or else the environment, coerced to the field's type; a
    `Literal[...]` field must be one of its choices. Fields given nowhere keep their defaults."""
    env = os.environ if environ is None else environ
    hints = get_type_hints(cls)
    found: dict[str, object] = {}
    for f in fields(cls):
        name = env_name(prefix, f.name)
        value = raw.get(f.name)
        if value is None:
            value = env.get(name)
        if value is None or value == "":
            continue
        choices = get_args(hints[f.name]) if get_origin(hints[f.name]) is Literal else ()
        if choices and value not in choices:
            raise error(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
        found[f.name] = _coerce(type(f.default), value, name, error)
    return found


def load(cls: type[T], prefix: str, parser: argparse.ArgumentParser, argv: list[str] | None,
         error: type[Exception], environ: Mapping[str, str] | None = None) -> T:
    return cls(**values(cls, prefix, vars(parser.parse_args(argv)), error, environ))
