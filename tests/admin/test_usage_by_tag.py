"""``GET /admin/usage?group_by=tag`` (issue 14, item 5: the README promises tag roll-ups,
the API refused them): calls made with the ``openai`` SDK under keys with tags and with
per-request tags, rolled up by tag — on SQLite+memory and PostgreSQL+Redis."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import openai

from tests.conftest import RunningGateway

MSG = [{"role": "user", "content": "tagged call"}]


def call(gw: RunningGateway, secret: str, tags: str | None = None) -> Decimal:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=secret, max_retries=0)
    headers = {"x-spendgate-tags": tags} if tags else None
    raw = client.chat.completions.with_raw_response.create(
        model="demo-small", messages=MSG, max_tokens=20, extra_headers=headers
    )
    return Decimal(raw.headers["x-spendgate-cost-usd"])


def test_usage_rolls_up_by_tag(gateway: RunningGateway) -> None:
    """A call counts under each of its tags (key tags and request tags), an untagged call
    under a null tag; the total counts every call once; tag combines with other
    dimensions and with CSV."""
    org = gateway.post("/admin/orgs", {"name": "tagged"})["id"]
    both = gateway.create_key(org_id=org, tags=["prod", "search"])
    loose = gateway.create_key(org_id=org, tags=["prod"], allow_request_tags=True)
    plain = gateway.create_key(org_id=org)
    spent = {
        "both": [call(gateway, both["key"]) for _ in range(2)],
        "loose": [call(gateway, loose["key"], tags="batch")],
        "plain": [call(gateway, plain["key"])],
    }
    report = gateway.get("/admin/usage", group_by="tag", org_id=org)
    assert report["group_by"] == ["tag"]
    by_tag = {row["tag"]: row for row in report["rows"]}
    assert set(by_tag) == {"prod", "search", "batch", None}
    assert by_tag["prod"]["requests"] == 3 and by_tag["search"]["requests"] == 2
    assert (by_tag["batch"]["requests"], by_tag[None]["requests"]) == (1, 1)
    assert Decimal(by_tag["prod"]["cost_usd"]) == sum(spent["both"]) + sum(spent["loose"])
    assert Decimal(by_tag["search"]["cost_usd"]) == sum(spent["both"])
    assert Decimal(by_tag["batch"]["cost_usd"]) == sum(spent["loose"])
    assert Decimal(by_tag[None]["cost_usd"]) == sum(spent["plain"])
    everything = sum((sum(costs) for costs in spent.values()), Decimal(0))
    assert Decimal(report["total_cost_usd"]) == everything  # each call once, not per tag

    mixed = gateway.get("/admin/usage", group_by="tag,model", org_id=org)
    assert {(r["tag"], r["model"]) for r in mixed["rows"]} == {
        ("prod", "demo-small"),
        ("search", "demo-small"),
        ("batch", "demo-small"),
        (None, "demo-small"),
    }
    exported = gateway.admin.get(
        "/admin/usage", params={"group_by": "tag", "org_id": org, "format": "csv"}
    )
    assert exported.status_code == 200, exported.text
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert sorted(r["tag"] for r in rows) == ["", "batch", "prod", "search"]  # no total row


def test_a_tag_named_other_keeps_its_own_running_total(gateway: RunningGateway) -> None:
    """``top=1`` keeps a tag that is called ``other`` and folds the rest into the
    ``"other"`` row (``other: true``): each row's ``cumulative_cost_usd`` is its own
    group's running total (the two rows shared one, so the folded row said it had run up
    both)."""
    org = gateway.post("/admin/orgs", {"name": "other-tag"})["id"]
    named = gateway.create_key(org_id=org, tags=["other"])
    spent = [call(gateway, named["key"]) for _ in range(3)]
    folded = [call(gateway, gateway.create_key(org_id=org, tags=[t])["key"]) for t in "ab"]
    report = gateway.get("/admin/usage", group_by="day,tag", org_id=org, top="1", cumulative="true")
    rows = {bool(row.get("other")): row for row in report["rows"]}
    assert [row["tag"] for row in report["rows"]] == ["other", "other"]
    assert Decimal(rows[False]["cumulative_cost_usd"]) == sum(spent)
    assert Decimal(rows[True]["cumulative_cost_usd"]) == sum(folded)
