"""Configuration: one frozen, typed object, read from the file and environment once.

The config file is TOML (``--config FILE`` or ``SPENDGATE_CONFIG``)::

    [gateway]
    max_body_bytes = 10485760
    upstream_timeout_seconds = 600

    [providers.openai]
    kind = "openai"                    # openai | anthropic | azure | openai_compatible
    api_key_env = "OPENAI_API_KEY"     # or api_key = "..." (discouraged)

    [models."gpt-4o-mini"]
    provider = "openai"
    upstream_model = "gpt-4o-mini"     # Azure: the deployment name
    price = { model = "gpt-4o-mini", provider = "openai" }

Environment: ``SPENDGATE_MASTER_KEY``, ``SPENDGATE_DATABASE_URL``,
``SPENDGATE_REDIS_URL``, ``SPENDGATE_CONFIG``, ``SPENDGATE_SPOOL_DIR``,
``SPENDGATE_LOG_LEVEL``, ``SPENDGATE_LOG_FORMAT``, ``SPENDGATE_METRICS_TOKEN``,
``SPENDGATE_REDIS_FAILURE_MODE``, ``SPENDGATE_FAIL_OPEN_REPLICAS``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

from spendgate.core.anomalies import Params as AnomalyParams
from spendgate.core.audit_chain import (
    DEFAULT_ANCHOR_HOURS,
    DEFAULT_RETENTION_DAYS,
    MIN_RETENTION_DAYS,
    AuditSettings,
    derive_key,
)
from spendgate.core.pricing import PriceOverride, PriceRef
from spendgate.core.rate_rules import is_pattern
from spendgate.core.usage import MAX_TOKENS_PER_CALL
from spendgate.errors import ConfigError
from spendgate.observability.logs import LOG_LEVELS

ProviderKind = Literal["openai", "anthropic", "azure", "openai_compatible", "simulated"]
PROVIDER_KINDS: tuple[str, ...] = ("openai", "anthropic", "azure", "openai_compatible", "simulated")

DEFAULT_BASE_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    #: never dialled: the simulated provider answers in-process
    "simulated": "simulated://local",
}
#: genai-prices provider id used when a model names no price provider
DEFAULT_PRICE_PROVIDER: dict[str, str | None] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "azure": "openai",
    "openai_compatible": None,
    "simulated": "openai",
}
DEMO_MODELS: dict[str, str] = {"demo-small": "gpt-4o-mini", "demo-large": "gpt-4o"}
DEFAULT_DATABASE_URL = "sqlite:///spendgate.db"


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    kind: ProviderKind
    base_url: str
    api_key: str | None = field(default=None, repr=False)
    api_version: str | None = None
    timeout_seconds: float = 600.0


@dataclass(frozen=True, slots=True)
class ModelRoute:
    name: str
    provider: ProviderConfig
    upstream_model: str
    price: PriceRef
    #: worst-case output tokens assumed when a request sets no max_tokens
    default_max_tokens: int = 4096
    #: the most input tokens a call can be billed when the provider expands its prompt
    #: (images, files, stored conversations); None: the price table's context window
    max_input_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 4100
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str | None = None
    #: every Redis key this gateway writes starts with it (replicas that share counters
    #: must share it; gateways sharing one Redis for separate fleets must not)
    redis_prefix: str = "sg:"
    master_key: str | None = field(default=None, repr=False)
    demo: bool = False
    max_body_bytes: int = 10 * 1024 * 1024
    upstream_timeout_seconds: float = 600.0
    #: a call that timed out after the provider had the whole request (it generates and
    #: bills regardless) is billed at its worst case; False: at $0, as before
    bill_upstream_timeouts: bool = True
    ledger_flush_seconds: float = 0.2
    ledger_batch_size: int = 500
    #: PostgreSQL connections each process keeps open, and how many more it may open for
    #: a burst: every replica and worker holds up to their sum, which must fit the
    #: server's ``max_connections`` (SQLite ignores both)
    database_pool_size: int = 10
    database_max_overflow: int = 20
    key_cache_seconds: float = 10.0
    #: a key or team with rate-limit rows: may it use models no row governs?
    unlisted_models: Literal["allow", "deny"] = "allow"
    #: forecasts: how often every budget is re-forecast, and by how many worker processes
    #: (0: a thread of the gateway itself; 2 refresh 10,000 budgets in under a minute)
    forecast_refresh_seconds: float = 900.0
    forecast_workers: int = 1
    #: ``budget.forecast_overrun`` goes out once a period, when P50 first lands above the
    #: limit (SPEC §5); each band here (ascending % of the limit, above 100) is announced
    #: once more, the first time P50 lands above it (never for hard-capped or day-one
    #: forecasts); empty by default
    forecast_overrun_escalation: tuple[int, ...] = ()
    #: failed authentications allowed per source address per minute (0: no limit)
    auth_failures_per_minute: int = 20
    #: where ledger rows wait, on disk, for the database (None: ``spool_directory``)
    spool_dir: str | None = None
    #: past this much unwritten spool, new calls are refused with 503
    spool_max_bytes: int = 1024 * 1024 * 1024
    #: when a call's row is on the disk itself (``spendgate.store.spool``): within
    #: ``spool_sync_seconds`` of the call (``interval``: the process's crash loses
    #: nothing, a power cut that last interval) or before its final bytes (``call``)
    spool_sync: Literal["interval", "call"] = "interval"
    spool_sync_seconds: float = 0.1
    #: SIGTERM: how long calls in flight may run on before they are cut (and billed for
    #: what the provider produced, ``incomplete``)
    shutdown_drain_seconds: float = 30.0
    #: ``serve --workers N``: how long a worker may leave the supervisor's ping unanswered
    #: before it is killed and restarted, dropping its calls in flight (uvicorn's own
    #: default, 5 s, was outlasted by a long GC or a busy machine)
    worker_healthcheck_seconds: int = 30
    #: start even when stored webhook secrets do not decrypt with the configured keys
    allow_unreadable_secrets: bool = False
    #: where people reach the console: the base of links in Slack, PagerDuty and e-mail
    #: (``SPENDGATE_PUBLIC_URL`` or ``[gateway] public_url``; default this server's address)
    public_url: str = "http://127.0.0.1:4100"
    #: how often one replica (by lease) raises live counters to the ledger's spend, and how
    #: long ago a call must have started to be compared (see ``guard.reconcile``)
    reconcile_seconds: float = 60.0
    reconcile_grace_seconds: float = 30.0
    #: a budget or wallet hold lapses this long after it was taken or last renewed (then a
    #: reaper releases it), and the heartbeat renews the holds of every call still running
    #: in this process this often: a live stream keeps its hold, a dead process's lapse
    hold_seconds: float = 60.0
    hold_heartbeat_seconds: float = 10.0
    #: Redis unreachable: ``closed`` refuses calls that hold anything (503), ``open``
    #: serves them against this replica's own counters, each cap cut to 1/``fail_open_replicas``
    #: of its headroom, and hands the spend to Redis when it is back (``guard.failover``)
    redis_failure_mode: Literal["closed", "open"] = "closed"
    fail_open_replicas: int = 1
    #: logging: spendgate's and uvicorn's level, and ``json`` (one object a line) or ``text``
    log_level: str = "info"
    log_format: Literal["json", "text"] = "text"
    #: ``GET /metrics`` wants ``Authorization: Bearer <this>`` when set
    metrics_token: str | None = field(default=None, repr=False)
    models: Mapping[str, ModelRoute] = field(default_factory=dict)
    #: spend anomalies: how often one replica checks every key, team and model (0: never)
    anomaly_check_seconds: float = 300.0
    anomaly_params: AnomalyParams = field(default_factory=AnomalyParams)
    #: raw ledger rows older than this many months are purged (0: kept for ever);
    #: rollups and statements are kept regardless
    ledger_retention_months: int = 13
    #: ``key.expiring`` goes out this many days before a key's expiry (0: never)
    key_expiring_days: int = 7


def _decimal(value: Any, where: str) -> Decimal:
    try:
        result = Decimal(str(value))
    except (InvalidOperation, ValueError) as exc:
        raise ConfigError(f"{where}: not a decimal: {value!r}") from exc
    if not result.is_finite() or result < 0:
        raise ConfigError(f"{where}: must be a non-negative number")
    return result


def _provider(
    name: str, raw: Mapping[str, Any], env: Mapping[str, str], timeout: float
) -> ProviderConfig:
    kind = raw.get("kind", name)
    if kind not in PROVIDER_KINDS:
        raise ConfigError(f"providers.{name}.kind must be one of {', '.join(PROVIDER_KINDS)}")
    base_url = raw.get("base_url") or DEFAULT_BASE_URLS.get(kind)
    if not base_url:
        raise ConfigError(f"providers.{name}.base_url is required for kind {kind!r}")
    api_key = raw.get("api_key")
    if api_key is None and "api_key_env" in raw:
        api_key = env.get(str(raw["api_key_env"]))
        if not api_key:
            raise ConfigError(
                f"providers.{name}: environment variable {raw['api_key_env']} is not set"
            )
    if kind == "azure" and not raw.get("api_version"):
        raise ConfigError(f"providers.{name}.api_version is required for Azure OpenAI")
    return ProviderConfig(
        name=name,
        kind=kind,
        base_url=str(base_url).rstrip("/"),
        api_key=api_key,
        api_version=raw.get("api_version"),
        timeout_seconds=_above_zero(
            raw.get("timeout_seconds", timeout), f"providers.{name}.timeout_seconds"
        ),
    )


#: a price override's rates: each per million tokens (per thousand searches), the first
#: two required (an override bills every input and output token), the rest optional
#: (left out, ``PriceOverride`` says what they bill at)
REQUIRED_RATES = ("input_per_mtok", "output_per_mtok")
OVERRIDE_RATES = (*REQUIRED_RATES, "cache_read_per_mtok", "cache_write_per_mtok",
                  "cache_write_1h_per_mtok", "input_audio_per_mtok", "output_audio_per_mtok",
                  "web_search_per_thousand")  # fmt: skip


def _price_ref(name: str, raw: Any, upstream_model: str, provider: ProviderConfig) -> PriceRef:
    raw = raw or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"models.{name}.price must be a table")
    override = None
    where = f"models.{name}.price"
    rates = {key: _decimal(raw[key], f"{where}.{key}") for key in OVERRIDE_RATES if key in raw}
    if rates:
        # a rate left out has a documented meaning for the optional ones only; a missing
        # input or output rate would bill those tokens at $0, silently
        for key in REQUIRED_RATES:
            if key not in rates:
                given = ", ".join(sorted(rates))
                raise ConfigError(
                    f"{where}.{key} is required: the override gives {given}, and tokens "
                    f'without a rate are not billed at $0 (write {key} = "0" for free ones)'
                )
        override = PriceOverride(**rates)
    return PriceRef(
        model=str(raw.get("model", upstream_model)),
        provider=raw.get("provider", DEFAULT_PRICE_PROVIDER[provider.kind]),
        override=override,
    )


def _routes(
    raw: Mapping[str, Any], providers: Mapping[str, ProviderConfig]
) -> dict[str, ModelRoute]:
    routes: dict[str, ModelRoute] = {}
    for name, spec in raw.items():
        if not isinstance(spec, Mapping):
            raise ConfigError(f"models.{name} must be a table")
        provider_name = str(spec.get("provider"))
        if provider_name not in providers:
            raise ConfigError(
                f"models.{name}.provider {provider_name!r} is not a configured provider"
            )
        provider = providers[provider_name]
        upstream_model = str(spec.get("upstream_model", name))
        routes[name] = ModelRoute(
            name=name,
            provider=provider,
            upstream_model=upstream_model,
            price=_price_ref(name, spec.get("price"), upstream_model, provider),
            default_max_tokens=_at_least_int(
                spec.get("default_max_tokens", 4096), 1, f"models.{name}.default_max_tokens"
            ),
            max_input_tokens=_max_input_tokens(spec.get("max_input_tokens"), name),
        )
    return routes


def _max_input_tokens(value: Any, model: str) -> int | None:
    if value is None:
        return None
    where = f"models.{model}.max_input_tokens"
    tokens = _at_least_int(value, 1, where)
    if tokens > MAX_TOKENS_PER_CALL:
        raise ConfigError(f"{where} must be at most {MAX_TOKENS_PER_CALL:,}")
    return tokens


def _unlisted(value: Any) -> Literal["allow", "deny"]:
    if value == "allow":
        return "allow"
    if value == "deny":
        return "deny"
    raise ConfigError('gateway.unlisted_models must be "allow" or "deny"')


def _spool_sync(gateway: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """``spool_sync`` (env ``SPENDGATE_SPOOL_SYNC`` first) and ``spool_sync_seconds``."""
    mode = env.get("SPENDGATE_SPOOL_SYNC") or gateway.get("spool_sync", "interval")
    if mode not in ("interval", "call"):
        raise ConfigError(
            f'spool_sync (SPENDGATE_SPOOL_SYNC) must be "interval" or "call", not {mode!r}'
        )
    seconds = gateway.get("spool_sync_seconds", 0.1)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= 10:
        raise ConfigError("gateway.spool_sync_seconds must be a number above 0, at most 10")
    return {"spool_sync": mode, "spool_sync_seconds": float(seconds)}


def _observability(gateway: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """``log_level``, ``log_format`` (env ``SPENDGATE_LOG_LEVEL``/``SPENDGATE_LOG_FORMAT``
    first) and ``metrics_token`` (env ``SPENDGATE_METRICS_TOKEN`` first)."""
    level = str(env.get("SPENDGATE_LOG_LEVEL") or gateway.get("log_level", "info")).lower()
    if level not in LOG_LEVELS:
        raise ConfigError(
            f"log_level (SPENDGATE_LOG_LEVEL) must be one of {', '.join(LOG_LEVELS)}, not {level!r}"
        )
    fmt = str(env.get("SPENDGATE_LOG_FORMAT") or gateway.get("log_format", "text")).lower()
    if fmt not in ("json", "text"):
        raise ConfigError(
            f'log_format (SPENDGATE_LOG_FORMAT) must be "json" or "text", not {fmt!r}'
        )
    token = env.get("SPENDGATE_METRICS_TOKEN") or gateway.get("metrics_token") or None
    if token is not None and not isinstance(token, str):
        raise ConfigError("gateway.metrics_token must be a string")
    return {"log_level": level, "log_format": fmt, "metrics_token": token}


def _redis_failure(gateway: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """``redis_failure_mode`` (env ``SPENDGATE_REDIS_FAILURE_MODE`` first; ``serve
    --redis-failure-mode`` sets it) and ``fail_open_replicas`` (env
    ``SPENDGATE_FAIL_OPEN_REPLICAS`` first)."""
    mode = str(
        env.get("SPENDGATE_REDIS_FAILURE_MODE") or gateway.get("redis_failure_mode", "closed")
    ).lower()
    if mode not in ("closed", "open"):
        raise ConfigError(
            "redis_failure_mode (SPENDGATE_REDIS_FAILURE_MODE, serve --redis-failure-mode) "
            f'must be "closed" or "open", not {mode!r}'
        )
    raw: Any = env.get("SPENDGATE_FAIL_OPEN_REPLICAS") or gateway.get("fail_open_replicas", 1)
    if isinstance(raw, str):
        try:
            raw = int(raw)
        except ValueError as exc:
            raise ConfigError(
                f"SPENDGATE_FAIL_OPEN_REPLICAS must be a whole number, not {raw!r}"
            ) from exc
    return {
        "redis_failure_mode": mode,
        "fail_open_replicas": _at_least_int(raw, 1, "gateway.fail_open_replicas"),
    }


def _boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, not {value!r}")
    return value


def _non_negative_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where} must be a whole number, 0 or more")
    return value


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(
            f"gateway.port must be a whole number from 0 (any free port) to 65535, not {value!r}"
        )
    return value


def _public_url(value: Any, default: str) -> str:
    url = str(value or default).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"public_url (SPENDGATE_PUBLIC_URL) must be an http(s) URL: {url!r}")
    return url


def _above_zero(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{where} must be a number above 0, not {value!r}")
    return float(value)


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, not {value!r}")
    return value


def checked_database_url(url: Any) -> str:
    """``SPENDGATE_DATABASE_URL`` / ``[gateway] database_url``: SQLite or PostgreSQL, and
    parsable, refused here rather than as a driver's traceback (the password not shown)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    where = "SPENDGATE_DATABASE_URL (gateway.database_url)"
    if not isinstance(url, str) or not url.startswith(("sqlite", "postgres")):
        raise ConfigError(
            f"{where} must be sqlite:///path.db or postgresql://user@host/db, not {_url_shown(url)}"
        )
    try:
        make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"{where} cannot be parsed: {_url_shown(url)}") from exc
    return url


def _url_shown(url: Any) -> str:
    """A URL in an error message, cut after its scheme (what follows may hold a password)."""
    text = str(url)
    scheme, sep, _ = text.partition("://")
    return f"{scheme}://…" if sep else repr(text[:40])


def _redis_url(url: Any) -> str | None:
    if url is None or url == "memory://":
        return None if url is None else "memory://"
    if not isinstance(url, str) or not url.startswith(("redis://", "rediss://")):
        raise ConfigError(
            "SPENDGATE_REDIS_URL (gateway.redis_url) must be redis://host:6379/0 or "
            f"rediss://…, not {_url_shown(url)}"
        )
    return url


def _at_least(value: Any, least: float, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= least:
        raise ConfigError(f"{where} must be a number, {least} or more")
    return float(value)


def demo_routes() -> dict[str, ModelRoute]:
    """The simulated provider's models, priced like real small and large models."""
    provider = ProviderConfig(name="simulated", kind="simulated", base_url="simulated://local")
    return {
        name: ModelRoute(
            name=name,
            provider=provider,
            upstream_model=name,
            price=PriceRef(model=priced_as, provider="openai"),
        )
        for name, priced_as in DEMO_MODELS.items()
    }


def data_directory(database_url: str) -> Path:
    """Where a gateway keeps its local files by default: the SQLite file's directory, or
    the working directory for other databases."""
    if database_url.startswith("sqlite:///") and ":memory:" not in database_url:
        return Path(database_url[len("sqlite:///") :]).parent
    return Path.cwd()


def spool_directory(settings: Settings) -> Path:
    """``spool_dir`` if set; else ``spendgate-spool`` in the ``data_directory``."""
    if settings.spool_dir:
        return Path(settings.spool_dir)
    return data_directory(settings.database_url) / "spendgate-spool"


def spool_directory_of(config_path: str | None, database_url: str, env: Mapping[str, str]) -> Path:
    """The spool directory ``serve --config config_path`` uses on ``database_url``
    (``SPENDGATE_SPOOL_DIR``, else ``[gateway] spool_dir``, else the default), for the
    commands that read the spool without serving (``db adopt-spool``)."""
    configured = env.get("SPENDGATE_SPOOL_DIR") or _config_file(config_path).get("gateway", {}).get(
        "spool_dir"
    )
    return spool_directory(Settings(database_url=database_url, spool_dir=configured))


def normalise_database_url(url: str) -> str:
    """Accept plain ``sqlite:///…`` / ``postgresql://…`` and pick the async driver."""
    if url.startswith("sqlite:"):
        return "sqlite+aiosqlite:" + url[len("sqlite:") :]
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def _config_file(path: str | None) -> dict[str, Any]:
    """The TOML file at ``path`` (none: empty); a missing or malformed one is a
    ``ConfigError`` saying so."""
    if not path:
        return {}
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    for table in ("gateway", "providers", "models"):
        if not isinstance(raw.get(table, {}), dict):
            raise ConfigError(f"[{table}] must be a table, not {raw[table]!r}")
    for name, entry in raw.get("providers", {}).items():
        if not isinstance(entry, dict):
            raise ConfigError(f"providers.{name} must be a table, not {entry!r}")
    return raw


def database_url_of(config_path: str | None) -> str:
    """The database ``serve --config config_path`` uses when ``SPENDGATE_DATABASE_URL``
    is not set: ``[gateway] database_url``, else ``sqlite:///spendgate.db``. For the
    commands that open the database without serving (``db migrate``, ``webhooks
    reencrypt``), which migrated a new ``spendgate.db`` when the URL was in the config."""
    gateway = _config_file(config_path).get("gateway", {})
    return checked_database_url(gateway.get("database_url", DEFAULT_DATABASE_URL))


def load_settings(
    *,
    config_path: str | None = None,
    env: Mapping[str, str] | None = None,
    demo: bool = False,
    host: str | None = None,
    port: int | None = None,
) -> Settings:
    """Read the TOML file and environment once; everything after uses the result."""
    env = os.environ if env is None else env
    path = config_path or env.get("SPENDGATE_CONFIG")
    raw = _config_file(path)
    gateway = raw.get("gateway", {})
    timeout = _above_zero(
        gateway.get("upstream_timeout_seconds", 600.0), "gateway.upstream_timeout_seconds"
    )
    providers = {n: _provider(n, p, env, timeout) for n, p in raw.get("providers", {}).items()}
    models = demo_routes() if demo else {}
    models.update(_routes(raw.get("models", {}), providers))
    host = host or _string(gateway.get("host", "127.0.0.1"), "gateway.host")
    port = _port(gateway.get("port", 4100)) if port is None else port  # 0: any free port
    return Settings(
        host=host,
        port=port,
        database_url=checked_database_url(
            env.get("SPENDGATE_DATABASE_URL") or gateway.get("database_url", DEFAULT_DATABASE_URL)
        ),
        database_pool_size=_at_least_int(
            _int_setting(env, "SPENDGATE_DATABASE_POOL_SIZE", gateway, "database_pool_size", 10),
            1,
            "SPENDGATE_DATABASE_POOL_SIZE / gateway.database_pool_size",
        ),
        database_max_overflow=_non_negative_int(
            _int_setting(
                env, "SPENDGATE_DATABASE_MAX_OVERFLOW", gateway, "database_max_overflow", 20
            ),
            "SPENDGATE_DATABASE_MAX_OVERFLOW / gateway.database_max_overflow",
        ),
        redis_url=_redis_url(env.get("SPENDGATE_REDIS_URL") or gateway.get("redis_url")),
        redis_prefix=_string(
            env.get("SPENDGATE_REDIS_PREFIX") or gateway.get("redis_prefix", "sg:"),
            "redis_prefix (SPENDGATE_REDIS_PREFIX)",
        ),
        master_key=env.get("SPENDGATE_MASTER_KEY") or None,
        demo=demo,
        max_body_bytes=_at_least_int(
            gateway.get("max_body_bytes", 10 * 1024 * 1024), 1, "gateway.max_body_bytes"
        ),
        upstream_timeout_seconds=timeout,
        bill_upstream_timeouts=_boolean(
            gateway.get("bill_upstream_timeouts", True), "gateway.bill_upstream_timeouts"
        ),
        ledger_flush_seconds=_above_zero(
            gateway.get("ledger_flush_seconds", 0.2), "gateway.ledger_flush_seconds"
        ),
        ledger_batch_size=_at_least_int(
            gateway.get("ledger_batch_size", 500), 1, "gateway.ledger_batch_size"
        ),
        key_cache_seconds=_at_least(
            gateway.get("key_cache_seconds", 10.0), 0, "gateway.key_cache_seconds"
        ),
        unlisted_models=_unlisted(gateway.get("unlisted_models", "allow")),
        forecast_refresh_seconds=_at_least(
            gateway.get("forecast_refresh_seconds", 900.0), 1, "gateway.forecast_refresh_seconds"
        ),
        forecast_workers=_non_negative_int(
            gateway.get("forecast_workers", 1), "gateway.forecast_workers"
        ),
        forecast_overrun_escalation=_escalation(gateway.get("forecast_overrun_escalation", [])),
        auth_failures_per_minute=_non_negative_int(
            gateway.get("auth_failures_per_minute", 20), "gateway.auth_failures_per_minute"
        ),
        spool_dir=env.get("SPENDGATE_SPOOL_DIR") or gateway.get("spool_dir"),
        spool_max_bytes=_non_negative_int(
            gateway.get("spool_max_bytes", 1024 * 1024 * 1024), "gateway.spool_max_bytes"
        ),
        **_spool_sync(gateway, env),
        shutdown_drain_seconds=_at_least(
            gateway.get("shutdown_drain_seconds", 30.0), 0, "gateway.shutdown_drain_seconds"
        ),
        worker_healthcheck_seconds=_at_least_int(
            gateway.get("worker_healthcheck_seconds", 30), 1, "gateway.worker_healthcheck_seconds"
        ),
        allow_unreadable_secrets=env.get("SPENDGATE_ALLOW_UNREADABLE_SECRETS", "") == "1",
        public_url=_public_url(
            env.get("SPENDGATE_PUBLIC_URL") or gateway.get("public_url"), f"http://{host}:{port}"
        ),
        reconcile_seconds=_at_least(
            gateway.get("reconcile_seconds", 60.0), 1, "gateway.reconcile_seconds"
        ),
        reconcile_grace_seconds=_at_least(
            gateway.get("reconcile_grace_seconds", 30.0), 0, "gateway.reconcile_grace_seconds"
        ),
        **_holds(gateway),
        **_observability(gateway, env),
        **_redis_failure(gateway, env),
        models=models,
        **_anomaly_settings(raw.get("anomalies", {})),
        ledger_retention_months=_non_negative_int(
            _int_setting(
                env, "SPENDGATE_LEDGER_RETENTION_MONTHS", gateway, "ledger_retention_months", 13
            ),
            "SPENDGATE_LEDGER_RETENTION_MONTHS / gateway.ledger_retention_months",
        ),
        key_expiring_days=_non_negative_int(
            gateway.get("key_expiring_days", 7), "gateway.key_expiring_days"
        ),
    )


#: the keys each table of the config file may hold; anything else is ignored, so ``serve``
#: names it (a typo such as ``spool_max_byte`` would otherwise silently be the default)
CONFIG_KEYS: dict[str, frozenset[str]] = {
    "": frozenset({"gateway", "providers", "models", "anomalies"}),
    "gateway": frozenset({
        "auth_failures_per_minute", "bill_upstream_timeouts", "database_max_overflow",
        "database_pool_size", "database_url",
        "fail_open_replicas",
        "forecast_overrun_escalation", "forecast_refresh_seconds", "forecast_workers",
        "hold_heartbeat_seconds", "hold_seconds", "host", "key_cache_seconds",
        "key_expiring_days", "ledger_batch_size", "ledger_flush_seconds",
        "ledger_retention_months", "log_format", "log_level", "max_body_bytes",
        "metrics_token", "port", "public_url", "reconcile_grace_seconds", "reconcile_seconds",
        "redis_failure_mode", "redis_prefix", "redis_url", "shutdown_drain_seconds",
        "spool_dir", "spool_max_bytes",
        "spool_sync", "spool_sync_seconds", "unlisted_models", "upstream_timeout_seconds",
        "worker_healthcheck_seconds",
    }),
    "anomalies": frozenset({
        "check_seconds", "min_excess_usd", "band_sds", "band_min_ratio", "history_weeks",
        "min_history_hours",
    }),
    "providers.*": frozenset(
        {"kind", "base_url", "api_key", "api_key_env", "api_version", "timeout_seconds"}
    ),
    "models.*": frozenset(
        {"provider", "upstream_model", "price", "default_max_tokens", "max_input_tokens"}
    ),
    "models.*.price": frozenset({"model", "provider", *OVERRIDE_RATES}),
}  # fmt: skip


def unknown_config_keys(path: str | None) -> list[str]:
    """The dotted names in the config file at ``path`` that spendgate does not read."""
    if not path:
        return []
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return []  # load_settings says what is wrong with it
    unknown = [k for k in raw if k not in CONFIG_KEYS[""]]
    for table in ("gateway", "anomalies"):
        section = raw.get(table)
        if isinstance(section, dict):
            unknown += [f"{table}.{k}" for k in section if k not in CONFIG_KEYS[table]]
    for table in ("providers", "models"):
        entries = raw.get(table)
        for name, entry in entries.items() if isinstance(entries, dict) else ():
            if not isinstance(entry, dict):
                continue
            where = f"{table}.{name}"
            unknown += [f"{where}.{k}" for k in entry if k not in CONFIG_KEYS[f"{table}.*"]]
            price = entry.get("price") if table == "models" else None
            if isinstance(price, dict):
                known = CONFIG_KEYS["models.*.price"]
                unknown += [f"{where}.price.{k}" for k in price if k not in known]
    return unknown


def unconfigured_names(settings: Settings, policy: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(field, message)`` for each provider or model ``policy`` names that this config
    does not have: a budget's ``categories.providers`` (provider names) and
    ``categories.models``, or a rate limit's ``model`` (a name, not a pattern, must be a
    configured model). A budget naming one counts no spend of it, a rate limit governs no
    call: refused when written (422), warned about when a stored row outlives a config
    change (``spendgate serve``, and the row's ``warnings`` in the admin API)."""
    if "model" in policy:  # a rate limit (a budget has no ``model``)
        named = {"model": ("model", [policy["model"]])}
    else:
        categories = policy.get("categories") or {}
        named = {
            f"categories.{kind}s": (kind, categories.get(f"{kind}s", []))
            for kind in ("provider", "model")
        }
    providers = sorted({route.provider.name for route in settings.models.values()})
    problems = []
    for where, (kind, names) in named.items():
        for name in names:
            if kind == "provider" and name not in providers:
                problems.append(
                    (
                        where,
                        f"{where}: {name!r} is not a configured provider "
                        f"(configured: {', '.join(providers) or 'none'})",
                    )
                )
            elif kind == "model" and not is_pattern(name) and name not in settings.models:
                problems.append((where, f"{where}: {name!r} is not a configured model"))
    return problems


#: the highest ``forecast_overrun_escalation`` band, % of the limit (100× the limit)
MAX_OVERRUN_BAND = 10_000


def _escalation(value: Any) -> tuple[int, ...]:
    """``forecast_overrun_escalation``: a list of whole percentages above 100 and at most
    ``MAX_OVERRUN_BAND``, ascending (empty: one ``budget.forecast_overrun`` a period)."""
    where = "gateway.forecast_overrun_escalation"
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be a list of percentages, e.g. [110, 125, 150, 200]")
    for band in value:
        if (
            isinstance(band, bool)
            or not isinstance(band, int)
            or not 100 < band <= MAX_OVERRUN_BAND
        ):
            raise ConfigError(
                f"{where}: {band!r} is not a whole percentage above 100 "
                f"(and at most {MAX_OVERRUN_BAND})"
            )
    if any(a >= b for a, b in pairwise(value)):
        raise ConfigError(f"{where} must be in ascending order, each band once: {value!r}")
    return tuple(value)


def _holds(gateway: Mapping[str, Any]) -> dict[str, Any]:
    """``hold_seconds`` and ``hold_heartbeat_seconds``: the heartbeat must come well
    before the hold lapses, or a live call's hold could be reaped between two beats."""
    hold = _at_least(gateway.get("hold_seconds", 60.0), 1, "gateway.hold_seconds")
    beat = _at_least(
        gateway.get("hold_heartbeat_seconds", 10.0), 0.1, "gateway.hold_heartbeat_seconds"
    )
    if beat * 2 > hold:
        raise ConfigError(
            f"gateway.hold_heartbeat_seconds ({beat:g}) must be at most half of "
            f"gateway.hold_seconds ({hold:g}), so a live call's hold is renewed before it lapses"
        )
    return {"hold_seconds": hold, "hold_heartbeat_seconds": beat}


def _int_setting(
    env: Mapping[str, str], name: str, gateway: Mapping[str, Any], key: str, default: int
) -> Any:
    """The environment variable ``name`` as a whole number if set, else ``[gateway] key``
    as the file has it (checked by the caller), else ``default``."""
    if not env.get(name):
        return gateway.get(key, default)
    try:
        return int(env[name])
    except ValueError as exc:
        raise ConfigError(f"{name} must be a whole number") from exc


def _anomaly_settings(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``[anomalies]``: ``check_seconds`` (0 turns checks off), ``min_excess_usd`` (the
    dollar floor), ``band_sds``, ``band_min_ratio``, ``history_weeks``, ``min_history_hours``."""
    defaults = AnomalyParams()
    every = raw.get("check_seconds", 300.0)
    if every != 0:
        every = _at_least(every, 10, "anomalies.check_seconds")
    floor = _decimal(raw.get("min_excess_usd", "10"), "anomalies.min_excess_usd")
    params = AnomalyParams(
        weeks=_at_least_int(raw.get("history_weeks", defaults.weeks), 1, "anomalies.history_weeks"),
        min_history_hours=_at_least_int(
            raw.get("min_history_hours", defaults.min_history_hours),
            24,
            "anomalies.min_history_hours",
        ),
        k=_at_least(raw.get("band_sds", defaults.k), 1, "anomalies.band_sds"),
        rel=_at_least(raw.get("band_min_ratio", defaults.rel), 0, "anomalies.band_min_ratio"),
        min_excess_nanos=int(floor * 1_000_000_000),
    )
    return {"anomaly_check_seconds": float(every), "anomaly_params": params}


def _at_least_int(value: Any, least: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{where} must be a whole number, {least} or more")
    return value


def load_audit_settings(env: Mapping[str, str], master_key: str | None) -> AuditSettings:
    """``SPENDGATE_AUDIT_KEY`` (else derived from the master key),
    ``SPENDGATE_AUDIT_RETENTION_DAYS`` and ``SPENDGATE_AUDIT_MIN_RETENTION_DAYS``; a
    retention below the minimum, or a minimum below 365 days, is refused.
    ``SPENDGATE_AUDIT_ANCHOR_HOURS``: how often the signed chain head goes out as an
    ``audit.anchor`` event (default 24; 0: never)."""
    raw_key = env.get("SPENDGATE_AUDIT_KEY")
    if raw_key:
        key = raw_key.encode()
    elif master_key:
        key = derive_key(master_key)
    else:
        raise ConfigError(
            "set SPENDGATE_AUDIT_KEY or SPENDGATE_MASTER_KEY to sign audit checkpoints"
        )
    minimum = _days(env, "SPENDGATE_AUDIT_MIN_RETENTION_DAYS", MIN_RETENTION_DAYS)
    retention = _days(env, "SPENDGATE_AUDIT_RETENTION_DAYS", DEFAULT_RETENTION_DAYS)
    if minimum < MIN_RETENTION_DAYS:
        raise ConfigError(
            f"SPENDGATE_AUDIT_MIN_RETENTION_DAYS must be at least {MIN_RETENTION_DAYS}"
        )
    if retention < minimum:
        raise ConfigError(f"SPENDGATE_AUDIT_RETENTION_DAYS must be at least {minimum}")
    anchor_hours = _days(env, "SPENDGATE_AUDIT_ANCHOR_HOURS", DEFAULT_ANCHOR_HOURS, "hours")
    if anchor_hours < 0:
        raise ConfigError("SPENDGATE_AUDIT_ANCHOR_HOURS must be 0 (never) or more")
    return AuditSettings(key, retention, minimum, anchor_hours)


def _days(env: Mapping[str, str], name: str, default: int, unit: str = "days") -> int:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a whole number of {unit}, not {raw!r}") from exc
