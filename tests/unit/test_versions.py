"""contract.versions: commit positions as fixed-width hex strings whose string order is numeric order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contract.versions import MAX_LSN, is_version, lsn_of_text, lsn_of_version, version_of_lsn

LSNS = st.integers(min_value=0, max_value=MAX_LSN)


@given(LSNS)
def test_versions_round_trip(lsn: int) -> None:
    version = version_of_lsn(lsn)
    assert lsn_of_version(version) == lsn
    assert is_version(version)


@given(LSNS)
def test_versions_fixed_width_lowercase_hex(lsn: int) -> None:
    version = version_of_lsn(lsn)
    assert len(version) == 16
    assert version == version.lower()
    assert set(version) <= set("0123456789abcdef")


@given(LSNS, LSNS)
def test_versions_string_order_is_numeric_order(a: int, b: int) -> None:
    va, vb = version_of_lsn(a), version_of_lsn(b)
    assert (va < vb) == (a < b)
    assert (va == vb) == (a == b)


@given(st.lists(LSNS, max_size=20))
def test_versions_sorting_strings_sorts_positions(lsns: list[int]) -> None:
    assert [lsn_of_version(v) for v in sorted(version_of_lsn(x) for x in lsns)] == sorted(lsns)


def test_versions_known_values() -> None:
    assert version_of_lsn(0) == "0000000000000000"
    assert version_of_lsn(26620224) == "0000000001963140"
    assert version_of_lsn(MAX_LSN) == "ffffffffffffffff"


@pytest.mark.parametrize("lsn", [-1, MAX_LSN + 1])
def test_versions_out_of_range_lsn_rejected(lsn: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        version_of_lsn(lsn)


@pytest.mark.parametrize("text", ["", "1963140", "00000016B374D848", "00000000001963140", "000000000196 140",
                                  "0000000001963140\n", "\n0000000001963140", "0x00000001963140"])
def test_versions_malformed_version_rejected(text: str) -> None:
    assert not is_version(text)
    with pytest.raises(ValueError, match="not a version"):
        lsn_of_version(text)


@pytest.mark.parametrize("value", [None, 26620224, b"0000000001963140"])
def test_versions_is_version_needs_a_string(value: object) -> None:
    assert not is_version(value)


def test_versions_lsn_of_text() -> None:
    assert lsn_of_text("16/B374D848") == 0x16_B374D848 == (0x16 << 32) + 0xB374D848
    assert lsn_of_text("0/1963140") == 26620224
    assert lsn_of_text("0/0") == 0
    assert lsn_of_text("FFFFFFFF/FFFFFFFF") == MAX_LSN
    assert version_of_lsn(lsn_of_text("16/B374D848")) == "00000016b374d848"


@given(LSNS)
def test_versions_lsn_of_text_round_trips_postgres_format(lsn: int) -> None:
    assert lsn_of_text(f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}") == lsn


@pytest.mark.parametrize("text", ["", "16", "16/", "/B374D848", "16/B374D848/1", "1/100000000", "-1/0",
                                  "16/-1", " 16/B374D848", "16/B374D848\n", "0x16/B374D848", "16/G"])
def test_versions_lsn_of_text_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        lsn_of_text(text)
