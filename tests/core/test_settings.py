"""Settings: refusal of the development secret, env/.env reading, immutability, lazy reading."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from finsecure.core.settings import DEFAULT_JWT_SECRET, Settings, get_settings

GOOD_SECRET = "s" * 40
OTHER_SECRET = "o" * 40


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No ``FINSECURE_*`` variable from the caller's shell and no ``.env`` of the checkout leaks in."""
    for name in list(os.environ):
        if name.upper().startswith("FINSECURE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


# --- the built-in development secret ----------------------------------------------------------------


@pytest.mark.parametrize("env", ["production", "test"])
def test_settings__default_secret_refused_outside_development(env: str) -> None:
    with pytest.raises(ValidationError, match="development secret"):
        Settings(env=env)  # type: ignore[arg-type]


def test_settings__default_secret_refused_when_env_is_unset() -> None:
    # The default environment is production, so a bare Settings() must refuse the placeholder.
    with pytest.raises(ValidationError, match="development secret"):
        Settings()


def test_settings__default_secret_given_explicitly_refused() -> None:
    with pytest.raises(ValidationError, match="development secret"):
        Settings(env="production", jwt_secret=SecretStr(DEFAULT_JWT_SECRET))


def test_settings__default_secret_refused_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINSECURE_ENV", "production")
    monkeypatch.setenv("FINSECURE_JWT_SECRET", DEFAULT_JWT_SECRET)
    with pytest.raises(ValidationError, match="development secret"):
        Settings()


def test_settings__default_secret_refused_in_previous_secrets() -> None:
    with pytest.raises(ValidationError, match="development secret"):
        Settings(
            env="production",
            jwt_secret=SecretStr(GOOD_SECRET),
            jwt_previous_secrets=(SecretStr(DEFAULT_JWT_SECRET),),
        )


def test_settings__default_secret_refused_in_previous_secrets_from_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FINSECURE_ENV", "production")
    monkeypatch.setenv("FINSECURE_JWT_SECRET", GOOD_SECRET)
    monkeypatch.setenv("FINSECURE_JWT_PREVIOUS_SECRETS", f'["{OTHER_SECRET}", "{DEFAULT_JWT_SECRET}"]')
    with pytest.raises(ValidationError, match="development secret"):
        Settings()


def test_settings__default_secret_accepted_in_development() -> None:
    settings = Settings(env="development")
    assert settings.jwt_secret.get_secret_value() == DEFAULT_JWT_SECRET


def test_settings__default_secret_accepted_in_development_from_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FINSECURE_ENV", "development")
    settings = Settings()
    assert settings.env == "development"
    assert settings.jwt_secret.get_secret_value() == DEFAULT_JWT_SECRET


def test_settings__error_does_not_echo_the_secret() -> None:
    secret = "short-but-very-private"
    with pytest.raises(ValidationError) as excinfo:
        Settings(env="production", jwt_secret=SecretStr(secret))
    assert secret not in str(excinfo.value)


# --- secret length ----------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ["development", "production"])
def test_settings__short_secret_refused(env: str) -> None:
    with pytest.raises(ValidationError, match="at least 32 characters"):
        Settings(env=env, jwt_secret=SecretStr("x" * 31))  # type: ignore[arg-type]


def test_settings__secret_of_32_characters_accepted() -> None:
    assert Settings(env="production", jwt_secret=SecretStr("x" * 32)).env == "production"


def test_settings__short_previous_secret_refused() -> None:
    # A short previous secret still verifies tokens, so it is as forgeable as a short current one.
    with pytest.raises(ValidationError, match="at least 32 characters"):
        Settings(
            env="production",
            jwt_secret=SecretStr(GOOD_SECRET),
            jwt_previous_secrets=(SecretStr("x" * 10),),
        )


def test_settings__short_secret_refused_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINSECURE_JWT_SECRET", "tooshort")
    with pytest.raises(ValidationError, match="at least 32 characters"):
        Settings()


# --- where values come from -------------------------------------------------------------------------


def test_settings__prefixed_environment_variables_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FINSECURE_JWT_SECRET", GOOD_SECRET)
    monkeypatch.setenv("FINSECURE_PORT", "9123")
    monkeypatch.setenv("FINSECURE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FINSECURE_CORS_ORIGINS", '["https://a.example", "https://b.example"]')
    monkeypatch.setenv("FINSECURE_LOG_JSON", "true")
    settings = Settings()
    assert settings.env == "production"
    assert settings.jwt_secret.get_secret_value() == GOOD_SECRET
    assert settings.port == 9123
    assert settings.data_dir == tmp_path / "data"
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.log_json is True


def test_settings__unprefixed_environment_variables_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9999")
    monkeypatch.setenv("ENV", "development")
    monkeypatch.setenv("JWT_SECRET", GOOD_SECRET)
    settings = Settings(env="development")
    assert settings.port == 8000
    with pytest.raises(ValidationError, match="development secret"):
        Settings()


def test_settings__invalid_environment_value_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINSECURE_JWT_SECRET", GOOD_SECRET)
    monkeypatch.setenv("FINSECURE_PORT", "70000")
    with pytest.raises(ValidationError, match="port"):
        Settings()


def test_settings__dotenv_in_cwd_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        f"FINSECURE_ENV=test\nFINSECURE_JWT_SECRET={GOOD_SECRET}\nFINSECURE_PORT=8765\n", encoding="utf-8"
    )
    settings = Settings()
    assert settings.env == "test"
    assert settings.jwt_secret.get_secret_value() == GOOD_SECRET
    assert settings.port == 8765


def test_settings__environment_overrides_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        f"FINSECURE_JWT_SECRET={GOOD_SECRET}\nFINSECURE_PORT=8765\n", encoding="utf-8"
    )
    monkeypatch.setenv("FINSECURE_PORT", "8766")
    assert Settings().port == 8766


def test_settings__dotenv_with_default_secret_refused(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"FINSECURE_ENV=production\nFINSECURE_JWT_SECRET={DEFAULT_JWT_SECRET}\n")
    with pytest.raises(ValidationError, match="development secret"):
        Settings()


def test_settings__dotenv_outside_cwd_ignored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("FINSECURE_ENV=development\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ValidationError, match="development secret"):
        Settings()


# --- shape ------------------------------------------------------------------------------------------


def test_settings__frozen() -> None:
    settings = Settings(env="development")
    with pytest.raises(ValidationError, match="frozen"):
        settings.port = 1234  # type: ignore[misc]
    assert settings.port == 8000


def test_settings__secret_hidden_in_repr() -> None:
    settings = Settings(env="production", jwt_secret=SecretStr(GOOD_SECRET))
    assert GOOD_SECRET not in repr(settings)
    assert GOOD_SECRET not in str(settings.model_dump())


def test_resolved_database_url__defaults_to_sqlite_under_data_dir(tmp_path: Path) -> None:
    settings = Settings(env="development", data_dir=tmp_path / "somewhere")
    assert settings.database_url == ""
    assert (
        settings.resolved_database_url == f"sqlite:///{(tmp_path / 'somewhere' / 'finsecure.db').as_posix()}"
    )


def test_resolved_database_url__relative_default() -> None:
    assert Settings(env="development").resolved_database_url == "sqlite:///var/finsecure.db"


def test_resolved_database_url__explicit_url_wins(tmp_path: Path) -> None:
    url = "postgresql+psycopg://u:p@db.example:5432/fin"
    settings = Settings(env="development", data_dir=tmp_path, database_url=url)
    assert settings.resolved_database_url == url


# --- get_settings -----------------------------------------------------------------------------------


def test_get_settings__cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINSECURE_ENV", "development")
    first = get_settings()
    monkeypatch.setenv("FINSECURE_PORT", "9001")
    assert get_settings() is first
    assert get_settings().port == 8000
    get_settings.cache_clear()
    assert get_settings().port == 9001


def test_get_settings__reads_at_call_time_not_import_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # The environment is bad (production with the placeholder secret): only calling get_settings fails.
    monkeypatch.setenv("FINSECURE_ENV", "production")
    with pytest.raises(ValidationError, match="development secret"):
        get_settings()
    monkeypatch.setenv("FINSECURE_ENV", "development")
    get_settings.cache_clear()
    assert get_settings().env == "development"


def test_get_settings__importing_the_app_with_a_bad_env_does_not_raise(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FINSECURE_")}
    env.update({"FINSECURE_ENV": "production", "FINSECURE_JWT_SECRET": "short"})
    code = (
        "import finsecure.api\n"
        "from finsecure.core.settings import get_settings\n"
        "try:\n"
        "    get_settings()\n"
        "except Exception as exc:\n"
        "    print('REFUSED', type(exc).__name__)\n"
    )
    result = subprocess.run(  # noqa: S603 - a fixed command line
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "REFUSED ValidationError"
