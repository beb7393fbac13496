"""Typed, frozen settings read from ``FINSECURE_*`` environment variables or a ``.env`` file.

Nothing reads the environment at import time: call :func:`get_settings`.
"""

from __future__ import annotations

import hashlib
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

    hash_key: SecretStr | None = None
    """Key for turning card numbers and other sensitive ids into stable tokens. When unset it is derived
    from the JWT secret; set it explicitly before you ever rotate that secret, or tokens change."""

    pipeline_max_rows: int = Field(default=10_000, ge=1)
    pipeline_max_age_ms: float = Field(default=10.0, ge=0)
    pipeline_queue_chunks: int = Field(default=16, ge=1)
    """Submit-queue capacity in chunks (at most one batch each when replaying): bounds queued latency."""
    store_score_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    """Scored events at or above this go to the database as well as the lake."""

    ingest_max_decompressed_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """A gzip body that inflates past this is refused (413): protection against zip bombs."""
    ingest_max_line_bytes: int = Field(default=1024 * 1024, ge=256)
    ingest_timeout_s: float = Field(default=2.0, ge=0.0)
    """How long an ingest request waits for room in a busy pipeline before answering 503."""

    demo_stream: bool = True
    """Feed the live demo stream (the built-in bank-day simulator) into the pipeline while serving."""
    demo_rate: float = Field(default=100.0, gt=0, le=1_000_000)
    """Events per second of the demo stream."""
    demo_customers: int = Field(default=100_000, ge=1_000)
    """Most customers in the demo world (a realistic pace needs ~5,000 per event/s; memory grows with it)."""

    admin_username: str = "admin"
    admin_password: SecretStr | None = None
    """Password for the first admin; when unset a one-time password is generated and printed."""

    metrics_token: SecretStr | None = None
    """When set, ``GET /metrics`` asks for ``Authorization: Bearer <token>``; unset, it is open (keep it
    on an internal port then)."""
    redis_url: str = ""
    """``redis://host:6379/0``: share login limits and live-update fan-out between API processes.
    Empty (the default): in-process state, right for a single process."""
    bus_url: str = ""
    """``nats://host:4222``: ingest publishes to NATS JetStream for ``finsecure worker`` processes instead
    of running the pipeline in the API process. Empty (the default): the embedded in-process pipeline."""
    bus_partitions: int = Field(default=8, ge=1, le=1024)
    """Partitions per domain on the bus; fixed for the life of a stream."""

    response_webhook_secret: SecretStr | None = None
    """Key that signs outgoing webhooks (HMAC-SHA256); derived from the JWT secret when unset. Give the
    same value to the receivers."""
    response_max_attempts: int = Field(default=5, ge=1, le=50)
    """Attempts of a failing response action (webhook, e-mail) before it goes to the dead letters."""
    response_backoff_s: float = Field(default=2.0, ge=0.0, le=3600.0)
    """Wait before the first retry; doubled for each later one."""
    response_timeout_s: float = Field(default=5.0, gt=0.0, le=120.0)
    response_dry_run: bool = False
    """Describe every response action instead of doing it (all playbooks)."""
    playbooks_dir: Path | None = None
    """Where the response playbooks are; unset means the ``playbooks/`` shipped beside ``src/``."""
    smtp_host: str = ""
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_from: str = "finsecure@localhost"
    smtp_starttls: bool = False

    ml_bootstrap: bool = True
    """When no model is in production at start, train the fast tier on a simulated day in the background
    (about a minute) so that a fresh install scores with real models (docs/decisions/0002-ml-artefacts.md)."""
    ml_reload_interval_s: float = Field(default=5.0, gt=0.0, le=3600.0)
    """How often the scoring step checks the registry for newly promoted models."""
    correlation_window_s: int = Field(default=6 * 3600, ge=60, le=30 * 86400)
    """Alerts on linked entities within this many seconds join one incident."""
    incident_min_severity: Literal["low", "medium", "high", "critical"] = "high"
    """An alert this severe opens an incident on its own; less severe ones wait as building blocks."""
    incident_min_rules: int = Field(default=2, ge=1, le=10)
    """Building blocks from this many rules on linked entities open an incident (1: every alert does)."""

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
    def lake_dir(self) -> Path:
        """Where the Parquet event lake lives."""
        return self.data_dir / "lake"

    @property
    def token_key(self) -> bytes:
        """The key for sensitive-id tokens (see :attr:`hash_key`)."""
        if self.hash_key is not None:
            return self.hash_key.get_secret_value().encode()
        return hashlib.blake2b(
            self.jwt_secret.get_secret_value().encode(), person=b"finsecure-token", digest_size=32
        ).digest()

    @property
    def response_webhook_key(self) -> bytes:
        """The webhook signing key (see :attr:`response_webhook_secret`)."""
        if self.response_webhook_secret is not None:
            return self.response_webhook_secret.get_secret_value().encode()
        return hashlib.blake2b(
            self.jwt_secret.get_secret_value().encode(), person=b"finsecure-hook", digest_size=32
        ).digest()

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
