"""The pure parts of alerting: payload formats, matching, retries, signing, targets, secrets."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from spendgate.core.access import NOBODY, Owner
from spendgate.core.budget_windows import window_at
from spendgate.webhooks import formats
from spendgate.webhooks.catalog import EVENT_TYPES, Event, severity, valid_pattern
from spendgate.webhooks.matching import (
    Preferences,
    Recipient,
    event_team_ids,
    may_route,
    may_see,
    scope_matches,
    team_subject,
    type_matches,
    wants,
)
from spendgate.webhooks.retries import RETRY_SCHEDULE, retry_delay, should_disable
from spendgate.webhooks.secret_urls import UrlRedactor, mask_url
from spendgate.webhooks.secrets_box import SecretBox, SecretUnreadable
from spendgate.webhooks.signing import new_secret, signed_headers, signing_secrets
from spendgate.webhooks.targets import TargetRefused, check_target, is_public

NOW = datetime(2026, 3, 10, 15, 30, tzinfo=UTC)


def budget_event(
    type_: str = "budget.soft_limit_reached",
    threshold: str = "soft",
    percent: str = "90",
    **extra: object,
) -> Event:
    data = {
        "budget_id": "bud_1",
        "scope_type": "team",
        "scope_id": "team_a",
        "tag": None,
        "period": "2026-03",
        "period_start": "2026-03-01T00:00:00+00:00",
        "period_end": "2026-04-01T00:00:00+00:00",
        "threshold": threshold,
        "percent": percent,
        "percent_used": "91.5",
        "spent_usd": "91.50",
        "amount_usd": "100.00",
        "hard_limit": True,
        "refused": False,
        **extra,
    }
    return Event(
        "evt_1",
        type_,
        NOW,
        data,
        org_id="org_1",
        dedup_key=f"budget:bud_1:2026-03:{threshold}:{percent}",
    )


# -- formats -------------------------------------------------------------------------------
def test_generic_body_is_the_event() -> None:
    """A plain webhook carries id, type, timestamp and data, nothing else."""
    body = formats.generic_body(budget_event())
    assert set(body) == {"id", "type", "timestamp", "data"}
    assert body["timestamp"] == "2026-03-10T15:30:00Z"
    assert body["data"]["spent_usd"] == "91.50"


def test_slack_message_reads_well() -> None:
    """Slack gets text plus blocks: the budget by name, scope, the threshold reached and how
    much is used, spent of amount, period end, and a link to the console's budget page."""
    body = formats.slack_body(budget_event(budget_name="search prod"), "https://spend.example.com/")
    assert set(body) == {"text", "blocks"}
    text = body["text"]
    for part in (
        "Budget soft limit reached",
        "budget search prod (bud_1)",
        "team team_a",
        "threshold soft limit 90%",
        "used 91.5%",
        "$91.50 of $100.00",
        "2026-04-01",
        "https://spend.example.com/usage/budgets/bud_1",
    ):
        assert part in text, part
    assert body["blocks"][0]["type"] == "header"
    fields = [f["text"] for f in body["blocks"][1]["fields"]]
    assert "*Budget*\nsearch prod (bud_1)" in fields
    assert "*Threshold*\nsoft limit 90%" in fields and "*Used*\n91.5%" in fields
    assert "*Spent*\n$91.50 of $100.00" in fields
    assert "*Period ends*\n2026-04-01T00:00:00+00:00" in fields
    assert (
        "<https://spend.example.com/usage/budgets/bud_1|Open in spendgate>"
        in (body["blocks"][-1]["elements"][0]["text"])
    )
    json.dumps(body)


@pytest.mark.parametrize(
    ("amount", "percent", "raise_"), [("5.00", 0, "+$5.00"), ("0.00", "10", "+10%")]
)
def test_an_exception_reads_as_its_raise_not_a_threshold(
    amount: str, percent: object, raise_: str
) -> None:
    """A granted exception's ``percent`` is the raise (0 when the raise is an amount): it
    read "threshold 0%" and never said by how much the budget was raised."""
    event = budget_event(
        "budget.exception_granted", "", exception_id="bex_1", amount_usd=amount, percent=percent
    )
    event.data.pop("threshold")
    event.data.pop("spent_usd")
    text = formats.summary(event)
    assert "threshold" not in text
    assert f"raise {raise_}" in text


@pytest.mark.parametrize(
    ("data", "link"),
    [
        ({"budget_id": "bud_1", "key_id": "key_1"}, "https://c.example/usage/budgets/bud_1"),
        ({"wallet_id": "wallet_1"}, "https://c.example/wallets/wallet_1"),
        ({"key_id": "key_1", "model": "m"}, "https://c.example/keys/key_1"),
        ({"model": "m"}, "https://c.example/notifications"),
        ({"budget_id": "b/../x"}, "https://c.example/usage/budgets/b%2F..%2Fx"),
    ],
)
def test_links_point_at_the_console_page_of_what_the_event_is_about(
    data: dict[str, str], link: str
) -> None:
    """A budget's page, a wallet's, a key's, else the notifications page; ids are quoted so
    none can step out of its page."""
    event = Event("evt_3", "price.unknown", NOW, data, "org_1")
    assert formats.console_link(event, "https://c.example/") == link


def test_slack_escapes_control_characters() -> None:
    event = Event("evt_2", "price.unknown", NOW, {"model": "<!channel> & co"}, "org_1")
    assert "&lt;!channel&gt; &amp; co" in formats.slack_body(event, "http://x")["text"]


@pytest.mark.parametrize(
    ("type_", "threshold", "expected"),
    [
        ("budget.threshold_crossed", "alert", "info"),
        ("budget.soft_limit_reached", "soft", "warning"),
        ("budget.hard_limit_reached", "hard", "critical"),
    ],
)
def test_pagerduty_trigger_shape_and_severity(type_: str, threshold: str, expected: str) -> None:
    """Events API v2: routing key, trigger, dedup key per budget+period+threshold, severity."""
    body = formats.pagerduty_body(
        budget_event(type_, threshold), "R0UTING", "trigger", "http://console"
    )
    assert body["routing_key"] == "R0UTING"
    assert body["event_action"] == "trigger"
    assert body["dedup_key"] == f"spendgate:budget:bud_1:2026-03:{threshold}:90"
    payload = body["payload"]
    assert payload["severity"] == expected
    assert payload["source"] == "spendgate"
    assert payload["summary"].startswith(formats.summary(budget_event(type_, threshold))[:20])
    assert len(payload["summary"]) <= 1024
    assert payload["custom_details"]["amount_usd"] == "100.00"


def test_pagerduty_resolve_names_only_the_incident() -> None:
    body = formats.pagerduty_body(budget_event(), "R", "resolve", "http://c")
    assert body == {
        "routing_key": "R",
        "event_action": "resolve",
        "dedup_key": "spendgate:budget:bud_1:2026-03:soft:90",
    }


def test_dedup_key_differs_by_period_and_threshold() -> None:
    a = formats.pagerduty_dedup_key(budget_event())
    b = formats.pagerduty_dedup_key(budget_event(threshold="hard", percent="100"))
    c = formats.pagerduty_dedup_key(budget_event(period="2026-04"))
    assert len({a, b, c}) == 3


def daily(tz: str) -> dict[str, str]:
    """The period fields of a daily budget's event at ``NOW`` in zone ``tz``."""
    window = window_at(NOW, "daily", tz)
    return {"period": window.key, "period_span": window.span}


def test_the_incident_is_of_the_window_not_its_date() -> None:
    """A daily budget moved from UTC to America/Los_Angeles is in another window under
    the same date (2026-03-10): a new incident. One moved from Pacific/Honolulu to
    Pacific/Kiritimati keeps its window under another date: the same incident (the key
    named the date: the same incident for both Los Angeles and UTC, two for one window)."""
    utc, la = (
        formats.pagerduty_dedup_key(budget_event(**daily(tz)))
        for tz in ("UTC", "America/Los_Angeles")
    )
    assert utc != la
    assert la == "spendgate:budget:bud_1:20260310T070000Z/20260311T070000Z:soft:90"
    honolulu, kiritimati = (
        formats.pagerduty_dedup_key(budget_event(**daily(tz)))
        for tz in ("Pacific/Honolulu", "Pacific/Kiritimati")
    )
    assert honolulu == kiritimati


def test_an_incident_opened_before_the_upgrade_keeps_its_key() -> None:
    """An event stored before its data named the window's span (only ``period``, the
    local date) is sent, and later resolved, under the key it was triggered with."""
    event = budget_event(period="2026-03-10")
    assert "period_span" not in event.data
    for action in ("trigger", "resolve"):
        body = formats.pagerduty_body(event, "R", action, "http://c")
        assert body["dedup_key"] == "spendgate:budget:bud_1:2026-03-10:soft:90"


def test_every_spec_event_type_has_a_severity() -> None:
    assert len(EVENT_TYPES) >= 13
    assert {severity(t, {}) for t in EVENT_TYPES} <= {"info", "warning", "critical"}
    assert valid_pattern("budget.*") and valid_pattern("*") and not valid_pattern("budget.nope")


# -- matching ------------------------------------------------------------------------------
def test_type_patterns() -> None:
    assert type_matches(["*"], "key.created")
    assert type_matches(["budget.*"], "budget.hard_limit_reached")
    assert not type_matches(["budget.*"], "wallet.depleted")
    assert type_matches(["wallet.depleted"], "wallet.depleted")


@pytest.mark.parametrize(
    ("scope_type", "scope_id", "hit"),
    [
        (None, None, True),
        ("org", "org_1", True),
        ("org", "org_2", False),
        ("team", "team_a", True),
        ("team", "team_b", False),
        ("user", "u_1", False),
    ],
)
def test_scope_filter(scope_type: str | None, scope_id: str | None, hit: bool) -> None:
    assert scope_matches(scope_type, scope_id, budget_event()) is hit


def test_visibility_by_role_and_team() -> None:
    """Org admins see the whole org; members only their own teams."""
    event = budget_event()
    assert may_see(Recipient("u1", "org_1", "org_admin"), event)
    assert may_see(Recipient("u2", "org_1", "member", frozenset({"team_a"})), event)
    assert not may_see(Recipient("u3", "org_1", "member", frozenset({"team_b"})), event)
    assert not may_see(Recipient("u4", "org_2", "org_admin"), event)


@pytest.mark.parametrize(
    ("data", "subject"),
    [
        # budget.*, forecast: the budget's scope
        ({"budget_id": "b", "scope_type": "key", "scope_id": "k1"}, ("key", "k1")),
        ({"budget_id": "b", "scope_type": "user", "scope_id": "u1"}, ("user", "u1")),
        ({"budget_id": "b", "scope_type": "agent", "scope_id": "a1"}, ("agent", "a1")),
        ({"budget_id": "b", "scope_type": "team", "scope_id": "t1"}, None),
        ({"budget_id": "b", "scope_type": "org", "scope_id": "o1"}, None),
        ({"budget_id": "b", "scope_type": "tag", "scope_id": None, "tag": "x"}, None),
        # a user's teams already named (stored events fanned out again)
        ({"scope_type": "user", "scope_id": "u1", "team_ids": []}, None),
        # wallet.low_balance / depleted: the wallet's scope
        ({"wallet_id": "w", "scope_type": "key", "scope_id": "k1"}, ("key", "k1")),
        # wallet.ticket_*: the ticket names its key's team
        ({"scope_type": "key", "scope_id": "k1", "key_id": "k1", "team_id": "t1"}, None),
        # ratelimit.exceeded names the key's team; key.* name it (null: org-wide key)
        ({"key_id": "k1", "team_id": "t1", "model": "m"}, None),
        ({"key_id": "k1", "scope_type": "key", "scope_id": "k1", "team_id": None}, None),
        # price.unknown, usage.implausible: the call's key, if any
        ({"model": "m", "key_id": "k1", "refused": True}, ("key", "k1")),
        ({"model": "m", "provider": "p"}, None),
    ],
)
def test_what_an_event_needs_looked_up_to_name_its_teams(
    data: dict[str, object], subject: tuple[str, str] | None
) -> None:
    assert team_subject("budget.threshold_crossed", data) == subject


def test_a_team_filter_matches_exactly_the_teams_an_event_concerns() -> None:
    """The team a budget is scoped to, the team of a key (``team_id``), every team of a
    user (``team_ids``): those teams match, no other (team B never hears of team A's)."""
    key_a = Event("evt_1", "budget.hard_limit_reached", NOW, {"scope_type": "key",
        "scope_id": "k1", "team_id": "team_a"}, org_id="org_1")  # fmt: skip
    member_ab = Event("evt_2", "budget.threshold_crossed", NOW, {"scope_type": "user",
        "scope_id": "u1", "team_ids": ["team_a", "team_b"]}, org_id="org_1")  # fmt: skip
    org_key = Event("evt_3", "key.created", NOW, {"scope_type": "key", "scope_id": "k2",
        "team_id": None, "user_id": "u1"}, org_id="org_1")  # fmt: skip
    assert event_team_ids(key_a.data) == {"team_a"}
    assert event_team_ids(member_ab.data) == {"team_a", "team_b"}
    assert event_team_ids(org_key.data) == frozenset()
    assert scope_matches("team", "team_a", key_a) and not scope_matches("team", "team_b", key_a)
    assert scope_matches("team", "team_a", member_ab) and scope_matches("team", "team_b", member_ab)
    assert not scope_matches("team", "team_a", org_key)
    member_b = Recipient("u9", "org_1", "member", frozenset({"team_b"}))
    assert may_see(member_b, member_ab) and not may_see(member_b, key_a)
    assert wants(Preferences(scopes=(("team", "team_b"),)), member_ab)
    assert not wants(Preferences(scopes=(("team", "team_b"),)), key_a)


def test_routes_go_to_endpoints_the_user_may_manage_now() -> None:
    """Org admins manage their org's endpoints (org- or team-scoped); no team role does,
    nobody another org's, and only the master key unscoped or tag-filtered ones."""
    admin = Recipient("u1", "org_1", "org_admin")
    team_admin = Recipient("u2", "org_1", "member", frozenset({"t"}), (("t", "team_admin"),))
    assert may_route(admin, Owner.of("org_1")) and may_route(admin, Owner.of("org_1", "t"))
    assert not may_route(admin, Owner.of("org_2")) and not may_route(admin, NOBODY)
    assert not may_route(team_admin, Owner.of("org_1", "t"))
    assert not may_route(Recipient("u3", "org_1", "finance"), Owner.of("org_1"))


def test_preferences_filter_types_and_scopes() -> None:
    event = budget_event()
    assert wants(Preferences(), event)
    assert not wants(Preferences(event_types=("wallet.*",)), event)
    assert wants(Preferences(scopes=(("team", "team_a"),)), event)
    assert not wants(Preferences(scopes=(("team", "team_b"),)), event)
    prefs = Preferences(event_types=("budget.*",), digest=True, webhook_endpoint_ids=("whe_1",))
    assert Preferences.from_json(prefs.to_json()) == prefs


# -- retries -------------------------------------------------------------------------------
def test_retry_schedule_with_jitter() -> None:
    """5 s, 5 min, 30 min, 2 h, 5 h, 10 h, each within ±10 %, then give up."""
    assert [retry_delay(n, 0.5) for n in range(1, 7)] == list(RETRY_SCHEDULE)
    assert retry_delay(1, 0.0) == timedelta(seconds=4.5)
    assert retry_delay(6, 0.999999) < timedelta(hours=11)
    assert retry_delay(7, 0.5) is None


def test_disable_after_five_days_of_failures() -> None:
    assert not should_disable(None, NOW)
    assert not should_disable(NOW - timedelta(days=4, hours=23), NOW)
    assert should_disable(NOW - timedelta(days=5), NOW)


# -- signing -------------------------------------------------------------------------------
def test_signature_verifies_with_the_library() -> None:
    """A receiver using standardwebhooks verifies; a tampered body or wrong secret fails."""
    secret, now = new_secret(), datetime.now(UTC)
    assert secret.startswith("whsec_")
    body = '{"id":"evt_1"}'
    headers = signed_headers("msg_1", now, body, [secret])
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, headers) == {"id": "evt_1"}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify('{"id":"evt_2"}', headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    stale = signed_headers("msg_1", now - timedelta(minutes=10), body, [secret])
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(body, stale)


def test_rotation_overlap_signs_with_both() -> None:
    old, new, now = new_secret(), new_secret(), datetime.now(UTC)
    during = signing_secrets(new, old, now + timedelta(hours=1), now)
    after = signing_secrets(new, old, now - timedelta(seconds=1), now)
    assert during == [new, old] and after == [new]
    headers = signed_headers("msg_1", now, "{}", during)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify("{}", headers)
    Webhook(new).verify("{}", headers)
    only_new = signed_headers("msg_1", now, "{}", after)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify("{}", only_new)


# -- targets -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "http://127.0.0.1/x",
        "http://10.1.2.3/",
        "http://169.254.169.254/latest",
        "http://[::1]:8080/",
        "http://[::ffff:127.0.0.1]/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http:///nohost",
        "http://inward.example/",
        "http://mixed.example/",
    ],
)
async def test_private_and_odd_targets_refused(url: str) -> None:
    dns = {"inward.example": ["192.168.1.5"], "mixed.example": ["93.184.216.34", "10.0.0.1"]}

    async def resolve(host: str, port: int) -> list[str]:
        return dns[host]

    with pytest.raises(TargetRefused):
        await check_target(url, allow_private=False, resolve=resolve)


async def test_public_targets_allowed_and_private_when_configured() -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return {"hooks.example.com": ["93.184.216.34", "2606:2800:220:1::1"]}[host]

    await check_target("https://hooks.example.com/x", allow_private=False, resolve=resolve)
    await check_target("http://127.0.0.1:9/x", allow_private=True, resolve=resolve)
    with pytest.raises(TargetRefused):
        await check_target("gopher://127.0.0.1/", allow_private=True, resolve=resolve)
    assert is_public("8.8.8.8") and not is_public("fd00::1")


# -- secrets at rest -----------------------------------------------------------------------
def test_secret_box_round_trip_and_key_rotation() -> None:
    """Encrypted tokens never contain the secret; a second key keeps old tokens readable."""
    old = SecretBox("passphrase-one")
    token = old.encrypt("whsec_abc")
    assert "whsec_abc" not in token and old.decrypt(token) == "whsec_abc"
    rotated = SecretBox("passphrase-two", "passphrase-one")
    assert rotated.decrypt(token) == "whsec_abc"
    with pytest.raises(SecretUnreadable):
        SecretBox("other").decrypt(token)
    derived = SecretBox.from_env({}, master_key="sg-master-x")
    assert derived.decrypt(SecretBox("sg-master-x").encrypt("s")) == "s"
    assert "passphrase" not in repr(rotated)


def test_secret_box_rotate_moves_tokens_to_the_newest_key() -> None:
    """``rotate`` re-encrypts under the first key; ``is_current`` tells which tokens need it."""
    old = SecretBox("passphrase-one")
    token = old.encrypt("whsec_abc")
    both = SecretBox("passphrase-two", "passphrase-one")
    assert not both.is_current(token)
    moved = both.rotate(token)
    assert both.is_current(moved) and SecretBox("passphrase-two").decrypt(moved) == "whsec_abc"
    with pytest.raises(SecretUnreadable):
        SecretBox("other").rotate(token)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://hooks.slack.com/services/T000/B000/XXXXSECRET",
            "https://hooks.slack.com/services/T…/B…/…",
        ),
        ("https://hooks.slack.com/services/T…/B…/…", "https://hooks.slack.com/services/T…/B…/…"),
        (
            "https://user:pw@hooks.example.com:8443/abcdef?token=zz#f",
            "https://hooks.example.com:8443/…?…",
        ),
        ("http://127.0.0.1:9/s3cretfirst/x/y", "http://127.0.0.1:9/s…/x…/…"),
        ("http://[::1]:9/services/T1/B2/S3", "http://[::1]:9/services/T…/B…/…"),
        ("https://hooks.example.com", "https://hooks.example.com"),
    ],
)
def test_mask_url_hides_the_credential_path(url: str, shown: str) -> None:
    assert mask_url(url) == shown
    assert mask_url(shown) == shown


def test_url_redactor_masks_urls_only_while_hiding() -> None:
    """Log records naming a hidden URL show it masked; %d arguments keep working."""
    redactor = UrlRedactor()
    url = "https://hooks.slack.com/services/T000/B000/XXXXSECRET"

    def rendered() -> str:
        record = logging.LogRecord(
            "httpx", logging.INFO, __file__, 1, 'HTTP Request: %s %s "%d"', ("POST", url, 200), None
        )
        redactor.filter(record)
        return record.getMessage()

    with redactor.hiding(url), redactor.hiding(url):
        pass
    assert "XXXXSECRET" in rendered()
    with redactor.hiding(url):
        assert rendered() == ('HTTP Request: POST https://hooks.slack.com/services/T…/B…/… "200"')
    assert "XXXXSECRET" in rendered()


def test_a_hard_limit_below_the_amount_shows_its_cap() -> None:
    """A hard limit at 80 % of $100 refuses calls at $80: its events (the limit reached,
    and the cap refusing calls) say "spent $80.00 of $100.00 (hard limit $80.00)" in
    Slack, PagerDuty and the summary, not a bare "of $100.00" that reads as room left.
    A cap at the amount adds nothing."""
    reached = budget_event(
        "budget.hard_limit_reached", "hard", "80", spent_usd="80.00", hard_limit_usd="80.00"
    )
    refusing = budget_event(
        "budget.calls_refused",
        "",
        spent_usd="79.99",
        hard_limit_usd="80.00",
        remaining_usd="0.01",
        worst_case_usd="0.0125",
    )
    for field in ("threshold", "percent", "percent_used", "hard_limit", "refused"):
        refusing.data.pop(field)  # not in this event's data
    for event, spent in ((reached, "$80.00"), (refusing, "$79.99")):
        said = f"spent {spent} of $100.00 (hard limit $80.00)"
        assert said in formats.summary(event)
        assert said in formats.slack_body(event, "https://spend.example.com")["text"]
        page = formats.pagerduty_body(event, "R0UT1NG", "trigger", "https://spend.example.com")
        assert said in page["payload"]["summary"]
        fields = formats.slack_body(event, "")["blocks"][1]["fields"]
        assert {"type": "mrkdwn", "text": f"*Spent*\n{said[6:]}"} in fields
    at_amount = budget_event("budget.hard_limit_reached", "hard", "100", hard_limit_usd="100.00")
    assert "spent $91.50 of $100.00," in formats.summary(at_amount)
    assert "hard limit $" not in formats.summary(at_amount)


def test_a_cap_refusing_calls_reads_as_what_it_refuses() -> None:
    """``budget.calls_refused`` says in words which calls the cap refuses and the worst
    case it refused (it would read as a bare "spent … of …"), and it warns: the hard
    limit's own event is the one that pages."""
    event = budget_event(
        "budget.calls_refused",
        "",
        remaining_usd="0.004",
        worst_case_usd="0.0125",
        hard_limit_usd="100.00",
    )
    for field in ("threshold", "percent", "percent_used", "hard_limit", "refused"):
        event.data.pop(field)  # not in this event's data
    text = formats.summary(event)
    assert text.startswith("Budget hard limit refusing calls: ")
    assert "refusing calls whose worst case exceeds $0.004 remaining" in text
    assert "(one of $0.0125 was refused)" in text
    assert event.severity == "warning"


def test_a_key_event_reads_by_the_key_name_once() -> None:
    """A viewer's bell read "Virtual key created: scope key key_0f40…, key id key_0f40…":
    the id twice, the name never. A key's own event names it once, name first."""
    data = {"key_id": "key_1", "name": "ta key", "scope_type": "key", "scope_id": "key_1"}
    text = formats.summary(Event("evt_1", "key.created", datetime(2026, 3, 1, tzinfo=UTC), data))
    assert text == "Virtual key created: scope key ta key (key_1)"


def test_an_event_of_a_key_scope_without_a_key_id_is_told() -> None:
    """A budget's event on a key scope names the key as its ``scope_id`` and carries no
    ``key_id``: telling it must not look one up (a KeyError there failed the event's
    store, and with it the ledger row that carried it)."""
    data = {"budget_id": "budget_1", "scope_type": "key", "scope_id": "key_1", "percent": 50}
    at = datetime(2026, 3, 1, tzinfo=UTC)
    text = formats.summary(Event("evt_1", "budget.threshold_crossed", at, data))
    assert "key key_1" in text
    named = {**data, "name": "ta key"}  # a name, but still no key_id: told by the scope
    told = formats.facts(Event("evt_2", "budget.threshold_crossed", at, named))
    assert ("Scope", "key key_1") in told


def test_figures_that_cannot_be_told_leave_the_title(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A fault in the wording of an event's figures (here a KeyError, as a key-scoped
    budget event once raised) leaves its notification the title alone, logged: the
    line is built while the event is stored, with the ledger row that may carry it."""

    def broken(event: Event) -> list[tuple[str, str]]:
        raise KeyError("key_id")

    monkeypatch.setattr(formats, "facts", broken)
    at = datetime(2026, 3, 1, tzinfo=UTC)
    with caplog.at_level(logging.ERROR, logger="spendgate.webhooks"):
        text = formats.summary(Event("evt_1", "budget.threshold_crossed", at, {}))
    assert text == formats.title("budget.threshold_crossed")
    assert "could not tell the figures of budget.threshold_crossed event evt_1" in caplog.text
