"""``[gateway]`` and provider/model settings: a bad value is a ``ConfigError`` naming the
setting (``serve`` prints it and exits 2), never a Python traceback or a gateway that
starts with a value it cannot use."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from spendgate.errors import ConfigError
from spendgate.settings import database_url_of, load_settings

SIM = '[providers.sim]\nkind = "simulated"\n'


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ('[gateway]\nmax_body_bytes = "ten"', "gateway.max_body_bytes"),
        ("[gateway]\nmax_body_bytes = -5", "gateway.max_body_bytes"),
        ('[gateway]\nupstream_timeout_seconds = "x"', "gateway.upstream_timeout_seconds"),
        ("[gateway]\nupstream_timeout_seconds = 0", "gateway.upstream_timeout_seconds"),
        ('[gateway]\nbill_upstream_timeouts = "no"', "gateway.bill_upstream_timeouts"),
        ("[gateway]\nbill_upstream_timeouts = 0", "gateway.bill_upstream_timeouts"),
        ('[gateway]\nledger_flush_seconds = "x"', "gateway.ledger_flush_seconds"),
        ("[gateway]\nledger_batch_size = 0", "gateway.ledger_batch_size"),
        ("[gateway]\nledger_batch_size = 2.5", "gateway.ledger_batch_size"),
        ('[gateway]\nkey_cache_seconds = "x"', "gateway.key_cache_seconds"),
        ("[gateway]\ndatabase_pool_size = 0", "gateway.database_pool_size"),
        ('[gateway]\ndatabase_pool_size = "ten"', "gateway.database_pool_size"),
        ("[gateway]\ndatabase_max_overflow = -1", "gateway.database_max_overflow"),
        ("[gateway]\nworker_healthcheck_seconds = 0", "gateway.worker_healthcheck_seconds"),
        ("[gateway]\nworker_healthcheck_seconds = 2.5", "gateway.worker_healthcheck_seconds"),
        ("[gateway]\nredis_prefix = 5", "redis_prefix"),
        ('[gateway]\nredis_url = "http://cache:6379"', "SPENDGATE_REDIS_URL"),
        ('[gateway]\ndatabase_url = "mysql://u:pw@db/x"', "SPENDGATE_DATABASE_URL"),
        ('[gateway]\nlog_level = "loud"', "SPENDGATE_LOG_LEVEL"),
        ('[gateway]\nredis_failure_mode = "sideways"', "--redis-failure-mode"),
        (SIM + '[models.m]\nprovider = "sim"\ndefault_max_tokens = "lots"',
         "models.m.default_max_tokens"),
        (SIM + '[models.m]\nprovider = "sim"\nmax_input_tokens = 0', "models.m.max_input_tokens"),
        (SIM + '[models.m]\nprovider = "sim"\nmax_input_tokens = "128k"',
         "models.m.max_input_tokens"),
        (SIM + '[models.m]\nprovider = "sim"\nmax_input_tokens = 2000000000',
         "models.m.max_input_tokens must be at most 1,000,000,000"),
        ('[providers.o]\nkind = "openai"\napi_key = "k"\ntimeout_seconds = "1m"',
         "providers.o.timeout_seconds"),
        # not a table where one belongs: was an AttributeError traceback
        ("gateway = 5", "[gateway] must be a table"),
        ('providers = "openai"', "[providers] must be a table"),
        ("models = [1]", "[models] must be a table"),
        ("[providers]\nopenai = 5", "providers.openai must be a table"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_naming_the_setting(tmp_path: Path, toml: str, named: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(toml + "\n")
    with pytest.raises(ConfigError) as refused:
        load_settings(config_path=str(config), env={})
    assert named in str(refused.value)
    assert "pw" not in str(refused.value)  # a URL's password is never echoed


def test_good_values_are_taken(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        "[gateway]\nmax_body_bytes = 2048\nupstream_timeout_seconds = 30\n"
        "bill_upstream_timeouts = false\n"
        "ledger_flush_seconds = 0.5\nledger_batch_size = 10\nkey_cache_seconds = 0\n"
        "worker_healthcheck_seconds = 120\n"
        'redis_prefix = "team-a:"\nredis_url = "redis://127.0.0.1:6379/3"\n'
        + SIM
        + '[models.m]\nprovider = "sim"\ndefault_max_tokens = 64\nmax_input_tokens = 9000\n'
    )
    settings = load_settings(config_path=str(config), env={})
    assert (settings.max_body_bytes, settings.upstream_timeout_seconds) == (2048, 30.0)
    assert settings.bill_upstream_timeouts is False
    assert load_settings(env={}).bill_upstream_timeouts is True  # the default
    assert (settings.ledger_flush_seconds, settings.ledger_batch_size) == (0.5, 10)
    assert settings.key_cache_seconds == 0.0
    assert settings.worker_healthcheck_seconds == 120
    assert load_settings(env={}).worker_healthcheck_seconds == 30  # not uvicorn's 5
    assert (settings.redis_prefix, settings.redis_url) == ("team-a:", "redis://127.0.0.1:6379/3")
    assert settings.models["m"].default_max_tokens == 64
    assert settings.models["m"].max_input_tokens == 9000


def test_price_overrides_take_every_cache_rate(tmp_path: Path) -> None:
    """A ``price`` table's cache rates, the 1-hour cache-write one too, are read (and
    not warned about as unknown keys); a bad one is refused naming the table."""
    from spendgate.core.pricing import PriceOverride
    from spendgate.settings import unknown_config_keys

    config = tmp_path / "c.toml"
    rates = (
        'input_per_mtok = "5", output_per_mtok = "25", cache_read_per_mtok = "0.5", '
        'cache_write_per_mtok = "6.25", cache_write_1h_per_mtok = "10", '
        'input_audio_per_mtok = "40", output_audio_per_mtok = "80"'
    )
    config.write_text(SIM + f'[models.m]\nprovider = "sim"\nprice = {{ {rates} }}\n')
    ref = load_settings(config_path=str(config), env={}).models["m"].price
    D = Decimal
    assert ref.override == PriceOverride(D(5), D(25), D("0.5"), D("6.25"), D(10), D(40), D(80))
    assert unknown_config_keys(str(config)) == []
    config.write_text(
        SIM + '[models.m]\nprovider = "sim"\n'
        'price = { input_per_mtok = "5", cache_write_1h_per_mtok = "-1" }\n'
    )
    with pytest.raises(ConfigError, match=r"models\.m\.price"):
        load_settings(config_path=str(config), env={})


@pytest.mark.parametrize(
    ("rates", "missing"),
    [
        ('input_per_mtok = "3"', "output_per_mtok"),
        ('output_per_mtok = "15"', "input_per_mtok"),
        ('input_per_mtok = "3", web_search_per_thousand = "10"', "output_per_mtok"),
        ('cache_read_per_mtok = "0.3"', "input_per_mtok"),
    ],
)
def test_a_price_override_without_an_input_or_output_rate_is_refused(
    tmp_path: Path, rates: str, missing: str
) -> None:
    """A ``price`` table overriding some rates but not both the input and the output one
    would bill those tokens at $0 (before: silently, or its rates were dropped and
    genai-prices' used): refused at start, naming the missing rate; ``"0"`` is how a
    free one is written."""
    config = tmp_path / "c.toml"
    config.write_text(SIM + f'[models.m]\nprovider = "sim"\nprice = {{ {rates} }}\n')
    with pytest.raises(ConfigError, match=rf"models\.m\.price\.{missing} is required"):
        load_settings(config_path=str(config), env={})
    config.write_text(
        SIM + '[models.m]\nprovider = "sim"\n'
        'price = { input_per_mtok = "3", output_per_mtok = "0" }\n'
    )
    override = load_settings(config_path=str(config), env={}).models["m"].price.override
    assert override is not None
    assert (override.input_per_mtok, override.output_per_mtok) == (Decimal(3), Decimal(0))


def test_a_bad_database_url_from_the_environment_hides_its_password() -> None:
    with pytest.raises(ConfigError, match=r"not mysql://…") as refused:
        load_settings(env={"SPENDGATE_DATABASE_URL": "mysql://admin:hunter2@db/x"})
    assert "hunter2" not in str(refused.value)


def test_unknown_keys_are_named(tmp_path: Path) -> None:
    """A typo in the config file is silently the default otherwise: ``serve`` warns with
    each name this returns."""
    from spendgate.settings import unknown_config_keys

    config = tmp_path / "c.toml"
    config.write_text(
        "[gatway]\n[gateway]\nspool_max_byte = 5\nspool_max_bytes = 5\n"
        '[anomalies]\ncheck_every = 60\n[providers.o]\nkind = "openai"\napi_keyenv = "K"\n'
        '[models.m]\nprovider = "o"\nprice = { input_per_mtok = "1", output = "2" }\n'
    )
    assert unknown_config_keys(str(config)) == [
        "gatway",
        "gateway.spool_max_byte",
        "anomalies.check_every",
        "providers.o.api_keyenv",
        "models.m.price.output",
    ]
    assert unknown_config_keys(None) == []


def test_every_key_the_settings_read_is_known() -> None:
    """The list ``serve`` checks a config against holds every ``[gateway]`` and
    ``[anomalies]`` key ``load_settings`` reads, so a new setting is never warned about."""
    import re

    import spendgate.settings as module
    from spendgate.settings import CONFIG_KEYS

    source = Path(module.__file__).read_text()
    read = re.findall(
        r'gateway(?:\.get\(|, )"(\w+)"', source
    )  # and _int_setting(..., gateway, "key"
    assert set(read) == CONFIG_KEYS["gateway"]
    anomalies = source[source.index("def _anomaly_settings") :]
    anomalies = anomalies[: anomalies.index("\ndef ")]
    assert set(re.findall(r'raw\.get\("(\w+)"', anomalies)) == CONFIG_KEYS["anomalies"]


def test_migrate_names_a_gateway_that_is_not_a_table(tmp_path: Path) -> None:
    """``db migrate --config`` reads ``[gateway] database_url``: a ``gateway`` that is
    not a table is named as such (it said the database URL was ``'None'``)."""
    config = tmp_path / "c.toml"
    config.write_text("gateway = 5\n")
    with pytest.raises(ConfigError, match=r"\[gateway\] must be a table"):
        database_url_of(str(config))
