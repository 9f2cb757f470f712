"""The signed audit head goes out as an ``audit.anchor`` event to unfiltered webhook
endpoints, so a receiver keeps anchors outside the database; what it received is an
anchor ``spendgate audit verify --since-anchor`` takes as it is."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spendgate.cli.audit import audit_app
from spendgate.core.audit_chain import Anchor, anchor_valid
from spendgate.store import audit as store
from spendgate.store.audit_anchor import emit_anchor
from spendgate.testing.fake_upstream import serve_in_thread
from spendgate.testing.webhook_receiver import Receiver
from tests.conftest import MASTER_KEY, RunningGateway


def test_the_head_is_sent_signed_and_verifies_later(
    gateway: RunningGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = gateway
    receiver = Receiver(now=gw.clock.now)
    handle = serve_in_thread(receiver)
    try:
        hook = gw.post("/admin/webhooks", {"url": f"{handle.url}/h", "event_types": ["audit.*"]})
        receiver.secrets = [hook["secret"]]
        gw.post("/admin/orgs", {"name": "o"})
        engine, key = gw.app.services.engine, gw.app.services.audit_settings.key
        sent = gw.run(emit_anchor(engine, key, gw.clock.now()))
        assert sent is not None and sent["type"] == "audit.anchor"
        assert gw.run(emit_anchor(engine, key, gw.clock.now())) is None  # head unmoved
        deadline = time.monotonic() + 120  # a guard against hanging, not a measurement
        while not receiver.verified and time.monotonic() < deadline:
            time.sleep(0.05)
        [delivery] = receiver.verified
        data = delivery.json()["data"]
        assert (data["seq"], data["hash"]) == gw.run(store.head(engine))
        anchor = Anchor(data["seq"], data["hash"], gw.clock.now(), data["signature"])
        assert anchor_valid(anchor, key)
    finally:
        handle.stop()
    kept = tmp_path / "anchor.json"
    kept.write_text(json.dumps(data))
    monkeypatch.setenv("SPENDGATE_MASTER_KEY", MASTER_KEY)
    done = CliRunner().invoke(audit_app, ["verify", "--url", gw.url, "--since-anchor", str(kept)])
    assert done.exit_code == 0 and "kept anchor found" in done.stdout
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({**data, "seq": data["seq"] + 1000}))
    done = CliRunner().invoke(audit_app, ["verify", "--url", gw.url, "--since-anchor", str(wrong)])
    assert done.exit_code == 1  # a changed seq no longer carries a valid signature (422)
