"""Typed, frozen settings read from ``FINSECURE_*`` environment variables or a ``.env`` file.

Nothing reads the environment at import time: call :func:`get_settings`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The placeholder secret. Accepted only when ``FINSECURE_ENV=development``.
DEFAULT_JWT_SECRET = "insecure-development-secret-change-me"  # noqa: S105 - a sentinel, refused in production

Environment = Literal["development", "test", "production"]


class Settings(BaseSettings):
    """Every knob of the platform, with the embedded defaults of ``make run``."""

    model_config = SettingsConfigDict(
        env_prefix="FINSECURE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    env: Environment = "production"
    data_dir: Path = Path("var")
    database_url: str = ""
    """SQLAlchemy URL; empty means a SQLite file ``<data_dir>/finsecure.db``."""
    database_echo: bool = False

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False

    jwt_secret: SecretStr = SecretStr(DEFAULT_JWT_SECRET)
    jwt_previous_secrets: tuple[SecretStr, ...] = ()
    """Old signing secrets still accepted for verification while tokens signed with them expire."""
    jwt_issuer: str = "finsecure"
    access_token_ttl_s: int = Field(default=15 * 60, ge=30, le=24 * 3600)
    refresh_token_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)

    argon2_time_cost: int = Field(default=3, ge=1)
    argon2_memory_kib: int = Field(default=64 * 1024, ge=8)
    argon2_parallelism: int = Field(default=2, ge=1)

    login_max_failures_per_user: int = Field(default=5, ge=1)
    login_max_failures_per_ip: int = Field(default=20, ge=1)
    login_failure_window_s: int = Field(default=15 * 60, ge=1)

    max_request_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    cors_origins: tuple[str, ...] = ()
    """Browser origins allowed to call the API; empty (the default) turns CORS off."""

    datasets_dir: Path = Field(
        default=Path("../shared/datasets"),
        validation_alias=AliasChoices("FINSECURE_DATASETS", "FINSECURE_DATASETS_DIR", "datasets_dir"),
    )
    """Where the real evaluation datasets live (`FINSECURE_DATASETS` also works). Only evaluation and
    benchmarks read them; the product never needs them."""

    admin_username: str = "admin"
    admin_password: SecretStr | None = None
    """Password for the first admin; when unset a one-time password is generated and printed."""

    @model_validator(mode="after")
    def _refuse_default_secret(self) -> Settings:
        secrets = (self.jwt_secret, *self.jwt_previous_secrets)
        if self.env != "development" and any(s.get_secret_value() == DEFAULT_JWT_SECRET for s in secrets):
            raise ValueError(
                "FINSECURE_JWT_SECRET is the built-in development secret; set a long random value "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`) "
                "or run with FINSECURE_ENV=development"
            )
        if len(self.jwt_secret.get_secret_value()) < 32:
            raise ValueError("FINSECURE_JWT_SECRET must be at least 32 characters long")
        # Previous secrets still verify tokens, so a short one is as forgeable as a short current one.
        if any(len(s.get_secret_value()) < 32 for s in self.jwt_previous_secrets):
            raise ValueError("every FINSECURE_JWT_PREVIOUS_SECRETS entry must be at least 32 characters long")
        return self

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file under ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'finsecure.db').as_posix()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, read once on first use."""
    return Settings()
