"""The scripts' money arithmetic (``spendgate/counters/lua/_nanos.lua``) run in the real
Redis and checked against Python's integers, across the whole 64-bit range.

Lua numbers are doubles, exact only up to 2**53; past it the scripts add and compare
figures with these functions, so they must agree with Python to the nano for any figure
a bucket can hold, given as Redis hands it over (a decimal string) or as a Lua number
below 2**53 (a sum computed earlier in the same script). Redis must be running, as for
the counters' tests; these scripts touch no keys.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis

from spendgate.counters.redis_pool import lua_library
from tests.conftest import REDIS_URL

#: each operation on pairs of figures from ARGV; a figure prefixed with 'n' is handed
#: over as a Lua number instead of a string
HARNESS = """
local function figure(text)
  if string.sub(text, 1, 1) == 'n' then return tonumber(string.sub(text, 2)) end
  return text
end
local function text(x)
  if type(x) == 'number' then return string.format('%d', x) end
  return x
end
local out = {}
for i = 1, #ARGV, 2 do
  local a, b = figure(ARGV[i]), figure(ARGV[i + 1])
  out[#out + 1] = text(nanos_add(a, b))
  out[#out + 1] = text(nanos_sub(a, b))
  out[#out + 1] = nanos_cmp(a, b)
  out[#out + 1] = text(nanos_min(a, b))
end
return out
"""

#: where the fast path ends, where doubles stop telling integers apart, and the ends of
#: the 64-bit range
EDGES = [0, 1, 10**9 - 1, 10**9, 10**15 - 1, 10**15, 2**53, 2 * 10**16, 10**18, 2**63 - 1]
EDGES += [-edge for edge in EDGES] + [-(2**63)]

figures = st.one_of(
    st.sampled_from(EDGES).flatmap(lambda edge: st.integers(edge - 2, edge + 2)),
    st.integers(-(10**15), 10**15),
    st.integers(-(2**63), 2**63 - 1),
).filter(lambda n: -(2**63) <= n < 2**63)
#: a figure and how it reaches the functions: as a Lua number (only below 2**53) or text
operands = st.tuples(figures, st.booleans()).map(lambda f: (f[0], f[1] and abs(f[0]) < 2**53))


@pytest.fixture(scope="module")
def harness() -> Iterator[tuple[Redis, str]]:
    """A client and the SHA of the harness, behind the money functions as the loader
    puts them in front of every script."""
    client = Redis.from_url(REDIS_URL)
    try:
        text = f"{lua_library('spendgate.counters', '_nanos')}\n{HARNESS}"
        yield client, client.script_load(text)
    finally:
        client.close()


def _arg(operand: tuple[int, bool]) -> str:
    value, as_number = operand
    return f"n{value}" if as_number else str(value)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(pairs=st.lists(st.tuples(operands, operands), min_size=1, max_size=50))
def test_sums_and_comparisons_agree_with_python(
    harness: tuple[Redis, str], pairs: list[tuple[tuple[int, bool], tuple[int, bool]]]
) -> None:
    """a + b, a - b, the comparison and the smaller, for any two 64-bit figures."""
    client, sha = harness
    reply = client.evalsha(sha, 0, *(_arg(side) for pair in pairs for side in pair))
    for i, ((a, _), (b, _)) in enumerate(pairs):
        added, subtracted, compared, smaller = reply[4 * i : 4 * i + 4]
        assert (int(added), int(subtracted), compared, int(smaller)) == (
            a + b,
            a - b,
            (a > b) - (a < b),
            min(a, b),
        ), (a, b)
