"""The console's usage table says how much of each group's spend is an estimate: a row
under its Total with the estimated cost and calls of each group shown (``Other`` the
sum of the groups folded into it) and of the whole, the same figures as the API's."""

from __future__ import annotations

import csv
import io
import re
from decimal import Decimal

import openai

from spendgate.testing.fake_upstream import FakeUpstream
from tests.console.conftest import Console, session

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_the_usage_table_shows_the_estimated_part(console: Console, fake: FakeUpstream) -> None:
    """One team has a whole call and a cut stream (estimated), the other a cut stream:
    by team with top 1 the kept team and Other each show one estimated call, the whole
    table two; each figure is the API's."""
    gw = console.gw
    for team in (console.team_id, console.other_team_id):
        key = gw.post("/admin/keys", {"name": "k", "org_id": console.org_id, "team_id": team})
        openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key["key"], max_retries=0)\
            .chat.completions.create(**CHAT)  # fmt: skip
        gw.cut_stream(key["key"], CHAT, fake)
    api = gw.get("/admin/usage", group_by="team", org_id=console.org_id)
    estimated = {r["team"]: r["estimated_usd"] for r in api["rows"]}
    assert api["estimated_calls"] == 2 and len(estimated) == 2
    with session(console.url, "org_admin@acme.test") as client:
        page = client.get("/usage?preset=30d&grain=day&group_by=team&top=1")
        assert page.status_code == 200
        exported = client.get("/usage?preset=30d&grain=day&group_by=team&top=1&format=csv")
    [row] = re.findall(r'<tr id="usage-estimated">(.*?)</tr>', page.text, re.S)
    cells = re.findall(r'data-calls="(\d+)">\$?([0-9.]+) \((\d+) calls\)', row)
    cost = {r["team"]: Decimal(r["cost_usd"]) for r in api["rows"]}
    kept = min(cost, key=lambda t: (-cost[t], t))  # as ``top_n`` ranks them
    other = next(t for t in estimated if t != kept)
    assert cells == [
        ("1", estimated[kept], "1"),
        ("1", estimated[other], "1"),
        ("2", api["total_estimated_usd"], "2"),
    ]
    # the CSV download carries the same figures, a column pair after each total
    table = list(csv.reader(io.StringIO(exported.text)))
    assert table[0][-4:-1] == ["total_usd", "estimated_usd", "estimated_calls"]
    assert [(r[0], r[-3], r[-2]) for r in table[1:]] == [
        (kept, estimated[kept], "1"),
        ("Other", estimated[other], "1"),
        ("total", api["total_estimated_usd"], "2"),
    ]


def test_the_usage_table_counts_the_calls_of_unknown_price(
    console: Console, fake: FakeUpstream
) -> None:
    """A model with no known price is billed $0: its column says $0.00, so a row under
    the Total says how many of each group's calls are in no figure, as the API counts
    them, and the CSV download ends with the same column."""
    gw = console.gw
    key = gw.post(
        "/admin/keys", {"name": "k", "org_id": console.org_id, "team_id": console.team_id}
    )
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key["key"], max_retries=0)
    client.chat.completions.create(**CHAT)
    for _ in range(2):
        client.chat.completions.create(**{**CHAT, "model": "mystery-model"})
    api = gw.get("/admin/usage", group_by="model", org_id=console.org_id)
    unpriced = {r["model"]: r["unpriced_requests"] for r in api["rows"]}
    assert unpriced == {"gpt-4o-mini": 0, "mystery-model": 2}
    with session(console.url, "org_admin@acme.test") as browser:
        page = browser.get("/usage?preset=30d&grain=day&group_by=model&top=5")
        assert page.status_code == 200
        exported = browser.get("/usage?preset=30d&grain=day&group_by=model&top=5&format=csv")
    heads = re.findall(
        r'<th scope="col" data-sort="number" class="num"[^>]*>([^<]+)</th>', page.text
    )
    [row] = re.findall(r'<tr id="usage-unpriced">(.*?)</tr>', page.text, re.S)
    cells = [int(n) for n in re.findall(r'data-calls="(\d+)">\1 calls<', row)]
    assert dict(zip(heads, cells, strict=False)) == unpriced
    assert cells[-1] == api["unpriced_requests"] == 2
    table = list(csv.reader(io.StringIO(exported.text)))
    assert table[0][-1] == "unpriced_requests"
    assert {r[0]: int(r[-1]) for r in table[1:]} == {**unpriced, "total": 2}
