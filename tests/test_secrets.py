"""Secrets stay secret: webhook settings are ``SecretStr`` and a malformed ``whsec_`` secret
stops start-up; a failed delivery's error (which becomes the job's, readable with
``jobs:read``) names the receiver's host, never its URL."""

from __future__ import annotations

import socket
import uuid

import httpx
import pytest

from shared.alerts import webhooks
from shared.db.database import Database
from shared.jobs.retry import TransientJobError
from shared.settings import SettingsError, load_settings

TOKEN = "tok_s3cr3t_in_the_url"


@pytest.mark.parametrize(
    "secret", ["whsec_", "whsec_not base64!", "whsec_abc", "whsec_" + "A" * 5 + "="]
)
def test_a_malformed_whsec_secret_stops_start_up(secret: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(webhook_url="https://hooks.example/x", webhook_secret=secret)
    message = str(info.value)
    assert message.startswith("STOCKROOM_WEBHOOK_SECRET"), message
    assert secret.removeprefix("whsec_") not in message or secret == "whsec_"


def test_webhook_settings_are_secret_and_checked() -> None:
    secret = "whsec_" + "c2VjcmV0LWZvci10ZXN0cy0xMjM0NTY3ODkwMTIzNDU2"
    url = f"https://hooks.example/in/{TOKEN}"
    settings = load_settings(webhook_url=url, webhook_secret=secret)
    assert TOKEN not in repr(settings) and secret not in repr(settings)
    assert settings.webhook_url is not None and settings.webhook_secret is not None
    assert settings.webhook_url.get_secret_value() == url
    assert webhooks.secret_bytes(settings.webhook_secret.get_secret_value())
    with pytest.raises(SettingsError) as info:
        load_settings(webhook_url="ftp://hooks.example/x", webhook_secret=secret)
    assert str(info.value).startswith("STOCKROOM_WEBHOOK_URL")


def test_server_urls_are_secret_and_checked() -> None:
    settings = load_settings(
        database_url=f"postgresql://stock:{TOKEN}@db.internal/stock",
        redis_url=f"redis://:{TOKEN}@cache.internal:6379/0",
    )
    assert TOKEN not in repr(settings) and TOKEN not in str(settings.model_dump())
    assert settings.require_database_url() == f"postgresql://stock:{TOKEN}@db.internal/stock"
    assert settings.require_redis_url() == f"redis://:{TOKEN}@cache.internal:6379/0"
    with pytest.raises(SettingsError) as info:
        load_settings(database_url="mysql://db.internal/stock")
    assert str(info.value).startswith("STOCKROOM_DATABASE_URL")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_a_failed_delivery_names_the_host_not_the_url(db: Database) -> None:
    async with db.pool.acquire() as conn:
        job_id: uuid.UUID = await conn.fetchval(
            "INSERT INTO jobs (kind, payload, max_attempts)"
            " VALUES ('webhook', '{}', 5) RETURNING id"
        )
    url = f"http://user:pw@127.0.0.1:{_closed_port()}/hook/{TOKEN}?token={TOKEN}"
    async with httpx.AsyncClient() as http:
        with pytest.raises(TransientJobError) as info:
            await webhooks.deliver(
                db,
                http,
                job_id=job_id,
                attempt=1,
                url=url,
                secret="whsec_c2VjcmV0",
                event_type="stock.low",
                data={"sku": "X"},
            )
    message = str(info.value)
    assert TOKEN not in message and "pw" not in message, message
    assert "127.0.0.1" in message
    async with db.pool.acquire() as conn:
        error = await conn.fetchval(
            "SELECT error FROM webhook_deliveries WHERE job_id = $1", job_id
        )
    assert error and TOKEN not in error
