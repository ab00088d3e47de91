"""Settings: a bad or missing value stops start-up with one line naming it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared.settings import SettingsError, load_settings


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"job_max_tries": "many"}, "STOCKROOM_JOB_MAX_TRIES"),
        ({"job_max_tries": 0}, "STOCKROOM_JOB_MAX_TRIES"),
        ({"env": "staging"}, "STOCKROOM_ENV"),
        ({"database_url": "mysql://x"}, "STOCKROOM_DATABASE_URL"),
        ({"redis_url": "http://x"}, "STOCKROOM_REDIS_URL"),
        ({"log_format": "xml"}, "STOCKROOM_LOG_FORMAT"),
        ({"allowed_origins": "*", "cors_allow_credentials": True}, "STOCKROOM_ALLOWED_ORIGINS"),
        ({"webhook_url": "http://127.0.0.1:9/x"}, "STOCKROOM_WEBHOOK_SECRET"),
        ({"max_body_bytes": 10}, "STOCKROOM_MAX_BODY_BYTES"),
    ],
)
def test_bad_setting_names_itself(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(**overrides)
    message = str(info.value)
    assert message.startswith(named), message
    assert "\n" not in message


def test_defaults_and_derived_values() -> None:
    s = load_settings(allowed_origins="https://a.example, https://b.example")
    assert s.allowed_origins == ["https://a.example", "https://b.example"]
    assert s.docs_on and s.effective_log_format.value == "console"
    prod = load_settings(env="production")
    assert not prod.docs_on and prod.effective_log_format.value == "json"
    assert load_settings(env="production", docs_enabled=True).docs_on


def test_command_stops_with_one_clear_line() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "STOCKROOM_JOB_MAX_TRIES": "lots",
        "STOCKROOM_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x",
    }
    r = subprocess.run(
        [sys.executable, "-m", "shared.cli", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "STOCKROOM_JOB_MAX_TRIES" in lines[0], r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "shared.cli", "migrate"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert r.returncode == 2 and "STOCKROOM_DATABASE_URL" in r.stderr
