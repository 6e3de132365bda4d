"""contract.keys: the reversible value encoding, and the same key from the same values in Python and JS."""

from __future__ import annotations

import json
import subprocess

from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.stack_settings import REPO
from contract.keys import decode_value, encode_value, key_for, valid_key

CASES: list[tuple[str, dict[str, object]]] = [
    ("card:{id}", {"id": 5}),
    ("tenant:{tenant_id}:doc:{id}", {"tenant_id": 7, "id": "José Ñ,x*"}),
    ("probe:{id}", {"id": "a:b/c=d 100% 🙂"}),
    ("flag:{on}", {"on": True}),
    ("t:{a}{b}", {"a": "", "b": "-_.@+"}),
]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_keys_encode_value_is_reversible_and_valid(text: str) -> None:
    encoded = encode_value(text)
    assert decode_value(encoded) == text
    assert encoded == "" or valid_key(encoded) or len(encoded) > 256


def test_keys_key_for_matches_the_rules_rendering() -> None:
    from debezium_json import change

    from cdc.rules import parse_rules

    rules = parse_rules({"tables": {"public.docs": {"keys": ["tenant:{tenant_id}:doc:{id}"]}}})
    row = {"tenant_id": 7, "id": "José Ñ,x*"}
    (rendered,) = rules.for_change(change("docs", "c", after=row, tx="1:2")).keys
    assert rendered == key_for("tenant:{tenant_id}:doc:{id}", row)


def test_keys_python_and_js_build_the_same_keys() -> None:
    """Review bug 9: a client builds the key the consumer emits from the same values (clients/js keyFor)."""
    script = ("import { keyFor } from './clients/js/freshwire.js';"
              f"const cases = {json.dumps(CASES)};"
              "console.log(JSON.stringify(cases.map(([t, v]) => keyFor(t, v))));")
    out = subprocess.run(["node", "--input-type=module", "-e", script], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [key_for(t, v) for t, v in CASES]
