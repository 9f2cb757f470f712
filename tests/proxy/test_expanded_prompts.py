"""A prompt the provider expands (an image, a file, a stored conversation, a server-side
tool) is held at the model's context window, since its bytes say nothing of its tokens:
a hard cap, a wallet or a spend limit that the bytes/4 estimate fitted could be passed by
one such call. Through the real openai and anthropic SDKs, on SQLite+memory and
PostgreSQL+Redis; the fake upstream bills an image part ``MEDIA_TOKENS`` input tokens."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from spendgate.core.money import format_usd
from spendgate.core.pricing import PriceTable
from spendgate.core.worst_case import IMAGE_ESTIMATE
from spendgate.proxy.app import input_bounds
from spendgate.proxy.simulated import MEDIA_TOKENS
from spendgate.settings import load_settings
from spendgate.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningGateway

#: gpt-4o-mini's price, held at a 2,000-token bound instead of its 128,000-token window
EXTRA = """
[models."vision-mini"]
provider = "openai"
upstream_model = "gpt-4o-mini"
price = { model = "gpt-4o-mini", provider = "openai" }
max_input_tokens = 2000

[models."gpt-audio"]
provider = "openai"
"""

IMAGE_URL = "https://example.com/cat.png"
TEXT = "What is in this picture?"


@pytest.fixture
def gateway_options() -> dict[str, Any]:
    return {"extra_config": EXTRA}


def openai_sdk(gw: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def chat(gw: RunningGateway, key: str, expanded: bool, model: str = "gpt-4o-mini") -> Any:
    content: list[dict[str, Any]] = [{"type": "text", "text": TEXT}]
    if expanded:
        content.append({"type": "image_url", "image_url": {"url": IMAGE_URL}})
    return openai_sdk(gw, key).chat.completions.with_raw_response.create(
        model=model, max_tokens=16, messages=[{"role": "user", "content": content}]
    )


def responses(gw: RunningGateway, key: str, expanded: bool, model: str = "gpt-4o-mini") -> Any:
    more = {"previous_response_id": "resp_earlier"} if expanded else {}
    return openai_sdk(gw, key).responses.with_raw_response.create(
        model=model, max_output_tokens=16, input=TEXT, **more
    )


def messages(gw: RunningGateway, key: str, expanded: bool, model: str = "gpt-4o-mini") -> Any:
    content: list[dict[str, Any]] = [{"type": "text", "text": TEXT}]
    if expanded:
        content.append({"type": "image", "source": {"type": "url", "url": IMAGE_URL}})
    client = anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)
    return client.messages.with_raw_response.create(
        model=model, max_tokens=16, messages=[{"role": "user", "content": content}]
    )


def document(gw: RunningGateway, key: str, expanded: bool, model: str = "gpt-4o-mini") -> Any:
    """An Anthropic document whose source is content blocks: text, and an image in it."""
    blocks: list[dict[str, Any]] = [{"type": "text", "text": TEXT}]
    if expanded:
        blocks.append({"type": "image", "source": {"type": "url", "url": IMAGE_URL}})
    source = {"type": "content", "content": blocks}
    client = anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)
    return client.messages.with_raw_response.create(
        model=model,
        max_tokens=16,
        messages=[{"role": "user", "content": [{"type": "document", "source": source}]}],
    )


Send = Callable[..., Any]
#: (how the call is sent, the model, its context window, a hard cap between the text
#: call's hold and the window's input price)
SHAPES: dict[str, tuple[Send, str, int, str]] = {
    "chat image": (chat, "gpt-4o-mini", 128_000, "0.01"),  # window: $0.0192
    "responses previous_response_id": (responses, "gpt-4o-mini", 128_000, "0.01"),
    "anthropic image": (messages, "claude-sonnet-4-5", 200_000, "0.30"),  # window: $0.60
    "anthropic image in a content document": (document, "claude-sonnet-4-5", 200_000, "0.30"),
}


def forwarded(fake: FakeUpstream) -> int:
    return sum(1 for r in fake.requests if isinstance(r.json, dict) and "model" in r.json)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_hard_cap_refuses_a_call_whose_provider_may_expand_the_prompt_past_it(
    gateway: RunningGateway, fake: FakeUpstream, shape: str
) -> None:
    """The cap fits the text call's bytes/4 hold many times over, not the model's whole
    window: the expanded call is refused before the provider sees it, saying why and
    what lowers the hold; the same call without the image or stored conversation passes."""
    send, model, window, cap = SHAPES[shape]
    key = gateway.create_key()
    gateway.create_budget(scope_type="key", scope_id=key["id"], amount_usd=cap, hard_limit=True)
    with pytest.raises((openai.RateLimitError, anthropic.RateLimitError)) as refused:
        send(gateway, key["key"], True, model)
    assert refused.value.status_code == 429
    message = str(refused.value)
    assert f"held at {window:,} input tokens, the most {model} can bill it" in message
    assert "max_input_tokens" in message
    assert forwarded(fake) == 0 and gateway.ledger() == []
    assert send(gateway, key["key"], False, model).http_response.status_code == 200
    assert forwarded(fake) == 1


def test_a_wallet_and_a_spend_limit_hold_the_window_too(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """402 from a wallet and 429 from a $-per-window limit, each with the reason."""
    funded = gateway.create_key()
    gateway.post(
        "/admin/wallets",
        {"scope_type": "key", "scope_id": funded["id"], "initial_topup_usd": "0.01"},
    )
    with pytest.raises(openai.APIStatusError) as short:
        chat(gateway, funded["key"], True)
    assert short.value.status_code == 402 and short.value.code == "insufficient_funds"
    assert "held at 128,000 input tokens, the most gpt-4o-mini" in short.value.message
    limited = gateway.create_key()
    gateway.post(
        "/admin/rate-limits",
        {"scope_type": "key", "scope_id": limited["id"], "model": "*", "max_spend_usd": "0.01"},
    )
    with pytest.raises(openai.RateLimitError) as slowed:
        chat(gateway, limited["key"], True)
    assert slowed.value.code == "rate_limit_exceeded"
    assert "the most gpt-4o-mini can bill it" in slowed.value.message
    assert forwarded(fake) == 0
    for key in (funded, limited):
        assert chat(gateway, key["key"], False).http_response.status_code == 200


def test_images_never_put_spend_past_the_cap_and_a_lower_bound_is_honoured(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """``max_input_tokens = 2000`` holds an image call at 2,000 input tokens (the
    provider bills it ~790): calls go through until the next one could pass the cap,
    and the ledger never does. Held at bytes/4 (~100 tokens), the last admitted call
    went past it."""
    key = gateway.create_key()
    cap_nanos = 1_000_000  # $0.001: about eight image calls at gpt-4o-mini's price
    gateway.create_budget(scope_type="key", scope_id=key["id"], amount_usd="0.001", hard_limit=True)
    served, refusal = 0, ""
    while not refusal:
        try:
            chat(gateway, key["key"], True, "vision-mini")
            served += 1
        except openai.RateLimitError as refused:
            refusal = refused.message
        assert served < 50
    rows = gateway.ledger()
    assert len(rows) == served >= 5
    assert all(row["input_tokens"] >= MEDIA_TOKENS for row in rows)
    assert sum(row["cost_nanos"] for row in rows) <= cap_nanos
    assert "the most vision-mini can bill it" in refusal


def test_a_tokens_per_minute_limit_counts_the_estimate_not_the_window(
    gateway: RunningGateway,
) -> None:
    """A tpm row of 5,000 tokens would refuse every image call if it counted the
    128,000-token window; it counts the request's estimate (its text, and an image as
    ``IMAGE_ESTIMATE``), then the usage billed."""
    key = gateway.create_key()
    gateway.post(
        "/admin/rate-limits",
        {"scope_type": "key", "scope_id": key["id"], "model": "*", "tpm": 5000},
    )
    raw = chat(gateway, key["key"], True, "gpt-4o")
    assert raw.http_response.status_code == 200
    assert int(raw.headers["x-ratelimit-limit-tokens"]) == 5000
    remaining = int(raw.headers["x-ratelimit-remaining-tokens"])
    assert 5000 - IMAGE_ESTIMATE - 16 - 100 <= remaining <= 5000 - IMAGE_ESTIMATE - 16


def test_anthropics_million_token_context_beta_is_held_at_a_million(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """claude-sonnet-4-5's window is 200,000 tokens, or 1,000,000 with the
    ``context-1m`` beta header, which is passed to the provider: a wallet that funds the
    first is short for the second."""
    key = gateway.create_key()
    gateway.post(
        "/admin/wallets",
        {"scope_type": "key", "scope_id": key["id"], "initial_topup_usd": "1"},
    )
    assert messages(gateway, key["key"], True, "claude-sonnet-4-5").http_response.status_code == 200
    client = anthropic.Anthropic(base_url=gateway.url, api_key=key["key"], max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as short:
        client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=16,
            messages=[{"role": "user", "content": [
                {"type": "image", "source": {"type": "url", "url": IMAGE_URL}}]}],
            extra_headers={"anthropic-beta": "context-1m-2025-08-07"},
        )  # fmt: skip
    assert short.value.status_code == 402
    assert "1,000,000 input tokens" in str(short.value)
    assert forwarded(fake) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_conversation_this_gateway_served_is_held_at_its_own_tokens(
    gateway: RunningGateway, fake: FakeUpstream, stream: bool
) -> None:
    """A Responses call that continues an answer this process served is held at that
    answer's input + output plus its own prompt, not the window, so a cap the window
    does not fit still lets it through; an id it never saw is held at the window."""
    key = gateway.create_key()
    gateway.create_budget(scope_type="key", scope_id=key["id"], amount_usd="0.01", hard_limit=True)
    client = openai_sdk(gateway, key["key"])
    if stream:  # the answer is cut at 16 tokens: it ends with response.incomplete
        events = client.responses.create(
            model="gpt-4o-mini", max_output_tokens=16, input=TEXT, stream=True
        )
        first = [e for e in events if e.type.startswith("response.")][-1].response
    else:
        first = client.responses.create(model="gpt-4o-mini", max_output_tokens=16, input=TEXT)
    assert first.usage is not None and first.id.startswith("resp_")
    raw = client.responses.with_raw_response.create(
        model="gpt-4o-mini", max_output_tokens=16, input="and then?", previous_response_id=first.id
    )
    assert raw.http_response.status_code == 200
    assert raw.parse().id != first.id  # a new answer, itself continued below
    again = client.responses.with_raw_response.create(
        model="gpt-4o-mini", max_output_tokens=16, input="more", previous_response_id=raw.parse().id
    )
    assert again.http_response.status_code == 200
    with pytest.raises(openai.RateLimitError) as refused:
        client.responses.create(
            model="gpt-4o-mini", max_output_tokens=16, input="x", previous_response_id="resp_other"
        )
    assert "held at 128,000 input tokens, the most gpt-4o-mini" in refused.value.message
    assert forwarded(fake) == 3


def test_gpt_4o_minis_images_are_held_past_its_window(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """gpt-4o-mini bills an image up to 48,169 tokens that do not count in its 128,000
    window: three images are held at 144,507 input tokens, one at the window."""
    key = gateway.create_key()
    gateway.post(
        "/admin/wallets",
        {"scope_type": "key", "scope_id": key["id"], "initial_topup_usd": "0.02"},
    )
    images = [{"type": "image_url", "image_url": {"url": IMAGE_URL}}] * 3
    with pytest.raises(openai.APIStatusError) as short:
        openai_sdk(gateway, key["key"]).chat.completions.create(
            model="gpt-4o-mini", max_tokens=16, messages=[{"role": "user", "content": images}]
        )
    assert short.value.status_code == 402
    assert "held at 144,507 input tokens, the most gpt-4o-mini" in short.value.message
    assert forwarded(fake) == 0
    assert chat(gateway, key["key"], True).http_response.status_code == 200  # one image


def test_each_models_bound_comes_from_its_setting_else_the_price_data(tmp_path: Path) -> None:
    """``max_input_tokens`` first, then the price data's window; an override price or a
    model the data has no window for has none (the gateway names them at start)."""
    config = tmp_path / "c.toml"
    config.write_text(
        '[providers.o]\nkind = "openai"\napi_key = "k"\n'
        '[models."gpt-4o-mini"]\nprovider = "o"\n'
        '[models.small]\nprovider = "o"\nupstream_model = "gpt-4o-mini"\n'
        "max_input_tokens = 900\n"
        '[models.local]\nprovider = "o"\n'
        'price = { input_per_mtok = "1", output_per_mtok = "1" }\n'
        '[models.mystery]\nprovider = "o"\n'
        'price = { model = "no-such-model", provider = "openai" }\n'
    )
    bounds = input_bounds(load_settings(config_path=str(config), env={}), PriceTable())
    assert bounds == {"gpt-4o-mini": 128_000, "small": 900, "local": None, "mystery": None}


def test_an_inline_photo_is_counted_as_an_image_by_a_tokens_per_minute_limit(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """A 600 kB base64 photo counted as text is 150,000 tokens, over a 100,000-token tpm
    row by itself, so the call could never pass; counted as an image it passes, and is
    held at the window under a budget, not at its bytes."""
    key = gateway.create_key()
    gateway.post(
        "/admin/rate-limits",
        {"scope_type": "key", "scope_id": key["id"], "model": "*", "tpm": 100_000},
    )
    photo = "data:image/jpeg;base64," + "A" * 600_000
    content = [{"type": "text", "text": TEXT}, {"type": "image_url", "image_url": {"url": photo}}]
    raw = openai_sdk(gateway, key["key"]).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", max_tokens=16, messages=[{"role": "user", "content": content}]
    )
    assert raw.http_response.status_code == 200
    assert forwarded(fake) == 1
    capped = gateway.create_key()
    gateway.create_budget(
        scope_type="key", scope_id=capped["id"], amount_usd="0.021", hard_limit=True
    )  # the window: $0.0192 + the output cap; the photo's bytes / 4: $0.0225
    raw = openai_sdk(gateway, capped["key"]).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", max_tokens=16, messages=[{"role": "user", "content": content}]
    )
    assert raw.http_response.status_code == 200


def test_audio_is_billed_and_held_at_the_models_audio_rates(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """gpt-audio bills audio at $32 in / $64 out per million against $2.50 / $10 for
    text: a call that hears a clip and answers aloud is billed at the audio rates (the
    fake upstream reports the clip as 765 audio tokens and the answer as audio), and a
    hard cap that the window as text input would fit refuses it (held as audio)."""
    key = gateway.create_key()
    content = [
        {"type": "text", "text": TEXT},
        {"type": "input_audio", "input_audio": {"data": "U" * 4096, "format": "mp3"}},
    ]
    client = openai_sdk(gateway, key["key"])
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-audio",
        max_tokens=16,
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "mp3"},
        messages=[{"role": "user", "content": content}],
    )
    usage = raw.parse().usage
    assert usage is not None and usage.prompt_tokens_details is not None
    heard = usage.prompt_tokens_details.audio_tokens
    assert heard == MEDIA_TOKENS
    spoken = usage.completion_tokens
    text = usage.prompt_tokens - heard
    nanos = text * 2_500 + heard * 32_000 + spoken * 64_000  # nanos per token
    assert raw.headers["x-spendgate-cost-usd"] == format_usd(nanos)
    [row] = gateway.ledger()
    assert row["cost_nanos"] == nanos
    capped = gateway.create_key()
    gateway.create_budget(scope_type="key", scope_id=capped["id"], amount_usd="1", hard_limit=True)
    with pytest.raises(openai.RateLimitError) as refused:  # window as audio: $4.10
        openai_sdk(gateway, capped["key"]).chat.completions.create(
            model="gpt-audio", max_tokens=16, messages=[{"role": "user", "content": content}]
        )
    assert "the most gpt-audio can bill it" in refused.value.message


def test_a_lower_bound_never_lets_the_requests_own_text_through_unheld(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """``max_input_tokens = 2000`` bounds what the provider adds to a prompt, not the
    ~80,000 tokens of text the request itself carries: with an image beside that text
    the call is held at the text, and a $0.003 cap refuses it as it refuses the text
    alone (held at the setting, it went through and cost four times the cap)."""
    key = gateway.create_key()
    gateway.create_budget(scope_type="key", scope_id=key["id"], amount_usd="0.003", hard_limit=True)
    text = "lorem ipsum " * 27_000
    for content in (
        [{"type": "text", "text": text}],
        [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": IMAGE_URL}}],
    ):
        with pytest.raises(openai.RateLimitError):
            openai_sdk(gateway, key["key"]).chat.completions.create(
                model="vision-mini", max_tokens=16, messages=[{"role": "user", "content": content}]
            )
    assert forwarded(fake) == 0


def test_an_answer_not_stored_is_not_remembered(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """``store: false``: the provider keeps nothing to continue, so the gateway keeps
    nothing either; a call naming that id is held at the window."""
    key = gateway.create_key()
    gateway.create_budget(scope_type="key", scope_id=key["id"], amount_usd="0.01", hard_limit=True)
    client = openai_sdk(gateway, key["key"])
    first = client.responses.create(
        model="gpt-4o-mini", max_output_tokens=16, input=TEXT, store=False
    )
    with pytest.raises(openai.RateLimitError) as refused:
        client.responses.create(
            model="gpt-4o-mini", max_output_tokens=16, input="more", previous_response_id=first.id
        )
    assert "held at 128,000 input tokens" in refused.value.message
