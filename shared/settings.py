"""Process settings, read from ``STOCKROOM_*`` environment variables and ``.env``."""

from __future__ import annotations

import sys
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Environment(StrEnum):
    development = "development"
    production = "production"


class LogFormat(StrEnum):
    json = "json"
    console = "console"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STOCKROOM_", env_file=".env", extra="ignore", frozen=True
    )

    # SecretStr: a URL may carry a password; it is never printed with the settings
    database_url: SecretStr | None = None
    redis_url: SecretStr | None = None
    env: Environment = Environment.development
    docs_enabled: bool | None = None
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cors_allow_credentials: bool = False
    queue_name: str = Field(default="stockroom", min_length=1, max_length=100)
    worker_concurrency: int = Field(default=50, ge=1, le=1000)
    job_max_tries: int = Field(default=5, ge=1, le=100)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    import_max_bytes: int = Field(default=50 * 1000 * 1000, ge=1024)
    import_upload_retention_hours: int = Field(default=24 * 7, ge=1)
    log_format: LogFormat | None = None
    webhook_url: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    worker_metrics_port: int | None = Field(default=None, ge=0, le=65535)
    worker_shutdown_grace_seconds: int = Field(default=20, ge=0, le=3600)
    db_pool_size: int = Field(default=10, ge=1, le=500)
    # A database that does not answer is a 503 within about a second (docs/decisions/008)
    db_connect_timeout: float = Field(default=1.0, gt=0, le=60)
    db_command_timeout: float | None = Field(default=30.0, gt=0)
    db_checkout_timeout: float = Field(default=10.0, gt=0, le=300)
    # The front door (``stockroom api``): connections and requests at once before uvicorn
    # answers 503, an idle keep-alive connection's life, a request body's whole read
    api_limit_concurrency: int = Field(default=2048, ge=1)
    api_keep_alive_timeout: int = Field(default=5, ge=1, le=300)
    api_header_timeout: float = Field(default=10.0, gt=0, le=300)
    api_body_read_timeout: float = Field(default=30.0, gt=0, le=3600)
    report_max_bytes: int = Field(default=200 * 1024 * 1024, ge=1024)
    report_retention_hours: int = Field(default=24 * 7, ge=1)
    # How long an ops console sign-in lasts (api.console); the key is re-checked on every page.
    console_session_hours: int = Field(default=8, ge=1, le=24 * 30)
    # per API key; 0 turns limiting off (api.ratelimit)
    rate_limit_requests: int = Field(default=6000, ge=0)
    rate_limit_window_seconds: int = Field(default=60, ge=1, le=86_400)
    # per API key: reports queued or running at once, and bytes of reports kept; 0: no cap
    report_quota_pending: int = Field(default=4, ge=0)
    report_quota_bytes: int = Field(default=2 * 1024 * 1024 * 1024, ge=0)

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                import json

                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        url = value.get_secret_value()
        if not url.startswith(("postgresql://", "postgresql+asyncpg://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if not value.get_secret_value().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis:// URL")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if not value.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        """A ``whsec_`` secret must decode now, not at the first delivery."""
        if value is None or not value.get_secret_value():
            return None
        from shared.alerts.webhooks import secret_bytes  # httpx and the database: only here

        try:
            secret_bytes(value.get_secret_value())
        except ValueError:
            raise ValueError("a whsec_ secret must be whsec_ followed by base64") from None
        return value

    @model_validator(mode="after")
    def _check_cors(self) -> Settings:
        if self.cors_allow_credentials and "*" in self.allowed_origins:
            raise ValueError(
                "ALLOWED_ORIGINS: '*' cannot be combined with CORS_ALLOW_CREDENTIALS=true"
            )
        if self.webhook_url and not self.webhook_secret:
            raise ValueError("WEBHOOK_SECRET: required when WEBHOOK_URL is set")
        return self

    @property
    def is_production(self) -> bool:
        return self.env is Environment.production

    @property
    def docs_on(self) -> bool:
        if self.docs_enabled is not None:
            return self.docs_enabled
        return not self.is_production

    @property
    def effective_log_format(self) -> LogFormat:
        if self.log_format is not None:
            return self.log_format
        return LogFormat.json if self.is_production else LogFormat.console

    def require_database_url(self) -> str:
        if not self.database_url:
            raise SettingsError("STOCKROOM_DATABASE_URL: not set")
        return self.database_url.get_secret_value()

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise SettingsError("STOCKROOM_REDIS_URL: not set")
        return self.redis_url.get_secret_value()


class SettingsError(Exception):
    """A setting is missing or invalid; the message names it in one line."""


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming the first bad setting, e.g. ``STOCKROOM_JOB_MAX_TRIES: ...``."""
    err = exc.errors()[0]
    loc = err.get("loc") or ()
    msg = str(err.get("msg", "invalid"))
    if loc:
        return f"STOCKROOM_{str(loc[0]).upper()}: {msg}"
    # model-level errors already start with the setting's name
    return f"STOCKROOM_{msg.removeprefix('Value error, ')}"


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()


def exit_on_settings_error(exc: SettingsError) -> None:
    print(f"stockroom: configuration error: {exc}", file=sys.stderr)
    raise SystemExit(2)
