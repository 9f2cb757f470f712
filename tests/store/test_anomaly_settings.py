"""The ``[anomalies]`` settings: read once at start, bad values refused naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from spendgate.errors import ConfigError
from spendgate.settings import load_settings


@pytest.mark.parametrize(
    ("line", "accepted"),
    [
        ("check_seconds = 0", True),
        ("check_seconds = 60", True),
        ('min_excess_usd = "2.50"', True),
        ("band_sds = 4", True),
        ("check_seconds = 5", False),
        ('min_excess_usd = "-1"', False),
        ('min_excess_usd = "lots"', False),
        ("band_sds = 0", False),
        ("band_min_ratio = -0.5", False),
        ("history_weeks = 0", False),
        ("min_history_hours = 2.5", False),
    ],
)
def test_anomaly_settings_are_checked(tmp_path: Path, line: str, accepted: bool) -> None:
    """Checks more often than every 10 s, a negative floor or band, or no history is a
    config error naming the setting; good values land in the detection parameters."""
    config = tmp_path / "c.toml"
    config.write_text(f"[anomalies]\n{line}\n")
    if not accepted:
        with pytest.raises(ConfigError, match=line.split()[0]):
            load_settings(config_path=str(config), env={})
        return
    settings = load_settings(config_path=str(config), env={})
    if line.startswith("min_excess_usd"):
        assert settings.anomaly_params.min_excess_nanos == 2_500_000_000
    if line.startswith("check_seconds"):
        assert settings.anomaly_check_seconds == float(line.split()[-1])


def test_anomaly_defaults() -> None:
    """Without a section: a check every 5 minutes, a $10 floor."""
    settings = load_settings(env={})
    assert settings.anomaly_check_seconds == 300.0
    assert settings.anomaly_params.min_excess_nanos == 10_000_000_000
