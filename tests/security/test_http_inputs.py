"""Hostile query strings for the HTTP endpoints: huge, unicode, percent-mangled, repeated parameters,
negative or huge timeouts. Every answer is a documented status (and error code), never a 500."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sec_support import HTTP_ERROR_CODES, Gateway, token, ver

from gateway import errors as E

N_PARAMS, N_RAW, N_TIMEOUTS = 150, 100, 100
AWAIT_MAX_MS = 20
MAX_QUERY = 65_000  # httpx refuses longer URL components (real servers stop at 8-16 KB already)

STATUSES = {
    "/v1/versions": {200, 400, 401, 403, 503},
    "/v1/wait": {200, 400, 401, 408, 503},
    "/v1/watermark": {200},
    "/readyz": {200, 503},
    "/metrics": {200},
    "/healthz": {200},
}

HOSTILE_VALUES = [
    "", "-1", "-0", "0", "00", "9" * 5000, "9" * 20, "\u00b2", "\u0661\u0662", "\uff11", "1e3", "0x10", " 5", "5 ",
    "+5", "5.0", "NaN", "inf", "\x00", "%00", "30000", "30001", "20", "21", "fw1:1", "fw1:-1", "fw1:" + "9" * 11,
    "../../etc/passwd", "*", "tenant:1:*", "tenant:2:x", "tenant:1:x", "tenant:1:../tenant:2:x", ",,,,", "a,,a",
    "a," * 2000, ",".join(f"k{i}" for i in range(1001)), ",".join(f"k{i}" for i in range(1000)), "\u202e",
    "\U0001f600", "a\nb", "a\r\nSet-Cookie: x=1", "%2e%2e%2f", "<script>", "' OR 1=1 --", "a" * 100_000,
]
values = st.one_of(
    st.sampled_from(HOSTILE_VALUES),
    st.text(max_size=40),
    st.integers(-2**70, 2**70).map(str),
    st.integers(0, AWAIT_MAX_MS).map(str),
    st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=4), st.integers(500, 20_000)),
    st.lists(st.text(alphabet="abz019:_.-*/%\x00\u00e9", max_size=12), max_size=30).map(",".join),
)
names = st.sampled_from(["keys", "token", "timeout_ms", "keys", "token", "timeout_ms", "since", "id"]) | st.text(
    max_size=8)
params = st.lists(st.tuples(names, values), max_size=8)
auths = st.sampled_from(["none", "all", "tenant1", "garbage"])


def _headers(auth: str) -> dict[str, str]:
    if auth == "none":
        return {}
    if auth == "garbage":
        return {"Authorization": "Bearer not.a.token"}
    return {"Authorization": f"Bearer {token(['*'] if auth == 'all' else ['tenant:1:*'])}"}


def _check(gw: Gateway, path: str, query: bytes, auth: str) -> httpx.Response:
    query = query[:MAX_QUERY]  # cutting through a %-escape is one more hostile input
    r: httpx.Response = gw.client.get(httpx.URL(f"http://testserver{path}", query=query), headers=_headers(auth))
    assert r.status_code in STATUSES[path], (r.status_code, r.text[:300])
    if r.status_code >= 400 and path.startswith("/v1/"):
        error = r.json()["error"]
        assert error["code"] in HTTP_ERROR_CODES, error
        assert len(r.content) < 64 * 1024  # a refused huge input is not echoed back in full
    if path == "/v1/versions" and r.status_code == 200:
        assert set(r.json()) == {"versions", "watermark"}
    return r


@pytest.fixture
def http_gw(make_gateway: Callable[..., Gateway]) -> Gateway:
    gw = make_gateway(await_max_ms=AWAIT_MAX_MS)
    gw.release(ver(3), ["tenant:1:x", "tenant:2:x", "k1"], tx_id="1")
    return gw


_hsettings = settings(max_examples=N_PARAMS, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_http_hostile_params_get_documented_statuses(http_gw: Gateway) -> None:
    @_hsettings
    @given(path=st.sampled_from(sorted(STATUSES)), pairs=params, auth=auths, write_token=st.booleans())
    def check(path: str, pairs: list[tuple[str, str]], auth: str, write_token: bool) -> None:
        if write_token:  # get /v1/wait past the token check, to the timeout
            pairs = [("token", "fw1:1"), *pairs]
        query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)
        _check(http_gw, path, query.encode(), auth)

    check()


def test_http_raw_query_strings_get_documented_statuses(http_gw: Gateway) -> None:
    """Query strings as an attacker types them: stray `%`, bad escapes, invalid UTF-8, `;`, empty pairs."""
    raw = st.one_of(
        st.text(alphabet="kestoimu_=&%;+,.:/*0123456789afAFzZ\u00e9\x00 ", max_size=200),
        st.builds(lambda a, b: f"{a}=%{b}", st.sampled_from(["keys", "token", "timeout_ms"]),
                  st.sampled_from(["", "f", "zz", "ff", "ff%fe", "c3%28", "00", "2e%2e%2f", "e2%80%ae"])),
    )

    @settings(max_examples=N_RAW, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(path=st.sampled_from(sorted(STATUSES)), text=raw, auth=auths)
    def check(path: str, text: str, auth: str) -> None:
        _check(http_gw, path, quote(text, safe="=&%;+,.:/*").encode(), auth)

    check()


def test_http_wait_hostile_timeouts_get_documented_statuses(http_gw: Gateway) -> None:
    """Past authentication and the write token, straight at timeout_ms: digits of every script, signs,
    spaces, huge and negative numbers."""
    timeouts = st.one_of(
        st.text(alphabet=st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=6),
        st.text(alphabet="0123456789 +-.eE_x", max_size=8),
        st.integers(-2**200, 2**200).map(str),
        st.integers(1, 10_000).map(lambda n: "9" * n),
        st.integers(0, 40).map(lambda n: "0" * n + "1"),
    )

    @settings(max_examples=N_TIMEOUTS, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(timeout_ms=timeouts)
    def check(timeout_ms: str) -> None:
        query = f"token=fw1:99&timeout_ms={quote(timeout_ms, safe='')}"
        r = _check(http_gw, "/v1/wait", query.encode(), "all")
        digits = timeout_ms.isascii() and timeout_ms.isdigit() and len(timeout_ms) <= 18
        valid = digits and int(timeout_ms) <= AWAIT_MAX_MS
        assert r.status_code == (408 if valid else 400)

    check()


@pytest.mark.parametrize("timeout_ms, status, code", [
    ("-1", 400, E.BAD_REQUEST),
    ("9" * 5000, 400, E.BAD_REQUEST),      # beyond int()'s digit limit
    ("9" * 30, 400, E.BAD_REQUEST),
    ("\u00b2", 400, E.BAD_REQUEST),         # a digit to str.isdigit(), not to int()
    ("\u0661\u0662", 400, E.BAD_REQUEST),   # Arabic-Indic digits
    ("1e3", 400, E.BAD_REQUEST),
    (" 5", 400, E.BAD_REQUEST),
    ("", 400, E.BAD_REQUEST),
    (str(AWAIT_MAX_MS + 1), 400, E.BAD_REQUEST),
    ("0", 408, E.TIMEOUT),
    (str(AWAIT_MAX_MS), 408, E.TIMEOUT),
])
def test_http_wait_timeout_ms_validated(http_gw: Gateway, timeout_ms: str, status: int, code: str) -> None:
    r = http_gw.client.get("/v1/wait", params={"token": "fw1:99", "timeout_ms": timeout_ms},
                           headers=_headers("all"))
    assert (r.status_code, r.json()["error"]["code"]) == (status, code)


def test_http_wait_repeated_params_use_one_value(http_gw: Gateway) -> None:
    r = http_gw.client.get("/v1/wait?token=fw1:x&token=fw1:1&timeout_ms=-5&timeout_ms=0", headers=_headers("all"))
    assert r.status_code == 200 and r.json() == {"visible": True, "token": "fw1:1", "version": ver(3)}


@pytest.mark.parametrize("keys, status, code", [
    ("", 400, E.BAD_REQUEST),
    (",,,", 400, E.BAD_REQUEST),
    (",".join(f"k{i}" for i in range(1001)), 400, E.TOO_MANY_KEYS),
    ("tenant:1:x,tenant:1:*", 400, E.INVALID_KEY),
    ("tenant:1:x,%2e%2e", 400, E.INVALID_KEY),
    ("tenant:1:x,tenant:2:x", 403, E.FORBIDDEN),
    ("tenant:1:x,tenant:1", 403, E.FORBIDDEN),
])
def test_http_versions_hostile_keys_refused(http_gw: Gateway, keys: str, status: int, code: str) -> None:
    r = http_gw.client.get("/v1/versions", params={"keys": keys}, headers=_headers("tenant1"))
    assert (r.status_code, r.json()["error"]["code"]) == (status, code)


def test_http_versions_at_the_key_limit_served(http_gw: Gateway) -> None:
    keys = ",".join(f"tenant:1:k{i}" for i in range(999)) + ",tenant:1:x"
    r = http_gw.client.get("/v1/versions", params={"keys": keys}, headers=_headers("tenant1"))
    assert r.status_code == 200 and r.json()["versions"]["tenant:1:x"] == ver(3)
    r = http_gw.client.get("/v1/versions", params={"keys": keys + ",tenant:1:y"}, headers=_headers("tenant1"))
    assert r.status_code == 400 and r.json()["error"]["code"] == E.TOO_MANY_KEYS


def test_http_invalid_key_error_lists_bounded_keys(http_gw: Gateway) -> None:
    keys = ",".join(["x" * 1500] * 40)
    r = http_gw.client.get("/v1/versions", params={"keys": keys}, headers=_headers("all"))
    body: dict[str, Any] = r.json()
    assert r.status_code == 400 and body["error"]["code"] == E.INVALID_KEY
    assert len(body["error"]["keys"]) <= 20 and all(len(k) <= 256 for k in body["error"]["keys"])
