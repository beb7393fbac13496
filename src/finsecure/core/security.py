"""Security primitives: password hashing, JWT access tokens, opaque secrets."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import string
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from finsecure.core.settings import Settings

API_KEY_PREFIX = "fsk"
_JWT_ALGORITHM = "HS256"


class Passwords:
    """argon2id hashing with the parameters from settings (RFC 9106 recommends t=3, m=64 MiB)."""

    def __init__(self, settings: Settings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )
        # Verifying against this when a user does not exist keeps failed logins equally slow,
        # so response times do not reveal which usernames exist.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        """Constant-effort check; ``password_hash=None`` burns the same time and returns False."""
        try:
            return (
                self._hasher.verify(password_hash or self._dummy_hash, password) and password_hash is not None
            )
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        return self._hasher.check_needs_rehash(password_hash)


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: int
    role: str
    jti: str
    expires_at: dt.datetime


class InvalidToken(Exception):
    """The token is malformed, forged, expired or of the wrong kind."""


def create_access_token(settings: Settings, *, user_id: int, role: str, now: dt.datetime) -> tuple[str, int]:
    """Sign a short-lived access token; returns the token and its lifetime in seconds."""
    ttl = settings.access_token_ttl_s
    claims = {
        "sub": str(user_id),
        "role": role,
        "type": "access",
        "iss": settings.jwt_issuer,
        "iat": int(now.timestamp()),
        "exp": int(now.timestamp()) + ttl,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm=_JWT_ALGORITHM), ttl


def decode_access_token(settings: Settings, token: str) -> AccessClaims:
    """Verify a token against the current and the previous signing secrets.

    Raises
    ------
    InvalidToken
        For anything but a well-formed, unexpired access token signed by one of our secrets.
    """
    payload: dict[str, Any] | None = None
    for secret in (settings.jwt_secret, *settings.jwt_previous_secrets):
        try:
            payload = jwt.decode(
                token,
                secret.get_secret_value(),
                algorithms=[_JWT_ALGORITHM],
                issuer=settings.jwt_issuer,
                options={"require": ["exp", "iat", "sub", "iss", "jti"]},
            )
            break
        except jwt.InvalidSignatureError:
            continue
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("the access token has expired; refresh it or sign in again") from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken("the access token is not valid") from exc
    if payload is None:
        raise InvalidToken("the access token signature does not match")
    if payload.get("type") != "access":
        raise InvalidToken("this is not an access token")
    try:
        user_id = int(payload["sub"])
    except (TypeError, ValueError) as exc:
        raise InvalidToken("the access token names no valid user") from exc
    return AccessClaims(
        user_id=user_id,
        role=str(payload.get("role", "")),
        jti=str(payload["jti"]),
        expires_at=dt.datetime.fromtimestamp(int(payload["exp"]), dt.UTC),
    )


def hash_secret(value: str) -> str:
    """SHA-256 of a high-entropy secret (API keys, refresh tokens); such secrets need no slow hash."""
    return hashlib.sha256(value.encode()).hexdigest()


def secrets_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def new_api_key() -> tuple[str, str]:
    """A new API key ``fsk_<prefix>_<secret>`` and its lookup prefix.

    Examples
    --------
    >>> key, prefix = new_api_key()
    >>> key.startswith(f"fsk_{prefix}_") and len(prefix) == 12
    True
    """
    prefix = secrets.token_hex(6)
    return f"{API_KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}", prefix


def parse_api_key(key: str) -> str | None:
    """The lookup prefix of a well-formed key, else ``None``."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != API_KEY_PREFIX or len(parts[1]) != 12 or len(parts[2]) < 32:
        return None
    return parts[1]


def new_refresh_token() -> str:
    return secrets.token_urlsafe(48)


def generate_password(length: int = 20) -> str:
    """A random password with letters and digits, easy to copy from a terminal."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))
