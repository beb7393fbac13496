"""Security primitives: argon2 passwords, JWT access tokens, API keys and secret hashing."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import string
from typing import Any

import jwt
import pytest

from finsecure.core.security import (
    API_KEY_PREFIX,
    InvalidToken,
    Passwords,
    create_access_token,
    decode_access_token,
    generate_password,
    hash_secret,
    new_api_key,
    new_refresh_token,
    parse_api_key,
    secrets_equal,
)
from finsecure.core.settings import Settings
from tests.conftest import TEST_JWT_SECRET, make_settings

OLD_SECRET = "old-secret-" + "y" * 40
NOW = dt.datetime(2026, 5, 1, 12, 0, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def fast_settings() -> Settings:
    return make_settings()


@pytest.fixture(scope="module")
def passwords(fast_settings: Settings) -> Passwords:
    return Passwords(fast_settings)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(_now().timestamp())
    claims: dict[str, Any] = {
        "sub": "7",
        "role": "analyst",
        "type": "access",
        "iss": "finsecure",
        "iat": now,
        "exp": now + 600,
        "jti": "j" * 32,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


# --- passwords --------------------------------------------------------------------------------------


def test_passwords_hash__argon2id_with_settings_parameters(passwords: Passwords) -> None:
    hashed = passwords.hash("correct-horse-battery-staple")
    assert hashed.startswith("$argon2id$")
    assert "m=64,t=1,p=1" in hashed
    assert "correct-horse-battery-staple" not in hashed


def test_passwords_hash__salted(passwords: Passwords) -> None:
    assert passwords.hash("same password!") != passwords.hash("same password!")


def test_passwords_verify__right_password(passwords: Passwords) -> None:
    assert passwords.verify(passwords.hash("s3cret-pass-phrase"), "s3cret-pass-phrase") is True


@pytest.mark.parametrize("attempt", ["s3cret-pass-phrasE", "", "s3cret-pass-phrase ", "s3cret"])
def test_passwords_verify__wrong_password(passwords: Passwords, attempt: str) -> None:
    assert passwords.verify(passwords.hash("s3cret-pass-phrase"), attempt) is False


def test_passwords_verify__none_hash_is_false(passwords: Passwords) -> None:
    assert passwords.verify(None, "anything") is False
    assert passwords.verify(None, "") is False


@pytest.mark.parametrize(
    "garbage",
    ["", "not-a-hash", "$argon2id$v=19$m=64,t=1,p=1$broken", "$2b$12$" + "a" * 53, "\x00"],
    ids=["empty", "text", "truncated-argon2", "bcrypt", "nul"],
)
def test_passwords_verify__garbage_hash_is_false(passwords: Passwords, garbage: str) -> None:
    assert passwords.verify(garbage, "anything") is False


def test_passwords_verify__unicode_password(passwords: Passwords) -> None:
    hashed = passwords.hash("pässwörd-☃-密码")
    assert passwords.verify(hashed, "pässwörd-☃-密码") is True
    assert passwords.verify(hashed, "passwörd-☃-密码") is False


def test_passwords_needs_rehash__same_parameters(passwords: Passwords) -> None:
    assert passwords.needs_rehash(passwords.hash("pw-pw-pw-pw-pw")) is False


@pytest.mark.parametrize(
    "changed", [{"argon2_time_cost": 2}, {"argon2_memory_kib": 128}, {"argon2_parallelism": 2}]
)
def test_passwords_needs_rehash__when_parameters_change(
    passwords: Passwords, changed: dict[str, int]
) -> None:
    old_hash = passwords.hash("pw-pw-pw-pw-pw")
    stronger = Passwords(make_settings(**changed))
    assert stronger.needs_rehash(old_hash) is True
    assert stronger.verify(old_hash, "pw-pw-pw-pw-pw") is True  # the old hash still verifies
    assert stronger.needs_rehash(stronger.hash("pw-pw-pw-pw-pw")) is False


# --- access tokens ----------------------------------------------------------------------------------


def test_create_access_token__round_trip(fast_settings: Settings) -> None:
    now = _now()
    token, ttl = create_access_token(fast_settings, user_id=42, role="admin", now=now)
    assert ttl == fast_settings.access_token_ttl_s
    claims = decode_access_token(fast_settings, token)
    assert claims.user_id == 42
    assert claims.role == "admin"
    assert len(claims.jti) == 32
    assert claims.expires_at == dt.datetime.fromtimestamp(int(now.timestamp()) + ttl, dt.UTC)
    assert claims.expires_at.tzinfo is dt.UTC


def test_create_access_token__claims(fast_settings: Settings) -> None:
    token, ttl = create_access_token(fast_settings, user_id=3, role="viewer", now=NOW)
    header = jwt.get_unverified_header(token)
    payload = jwt.decode(token, options={"verify_signature": False})
    assert header["alg"] == "HS256"
    assert payload["sub"] == "3"
    assert payload["type"] == "access"
    assert payload["iss"] == fast_settings.jwt_issuer
    assert payload["iat"] == int(NOW.timestamp())
    assert payload["exp"] == int(NOW.timestamp()) + ttl


def test_create_access_token__unique_jti(fast_settings: Settings) -> None:
    now = _now()
    first, _ = create_access_token(fast_settings, user_id=1, role="viewer", now=now)
    second, _ = create_access_token(fast_settings, user_id=1, role="viewer", now=now)
    assert first != second
    assert decode_access_token(fast_settings, first).jti != decode_access_token(fast_settings, second).jti


def test_decode_access_token__expired(fast_settings: Settings) -> None:
    issued = _now() - dt.timedelta(seconds=fast_settings.access_token_ttl_s + 5)
    token, _ = create_access_token(fast_settings, user_id=1, role="viewer", now=issued)
    with pytest.raises(InvalidToken, match="expired"):
        decode_access_token(fast_settings, token)


def test_decode_access_token__just_before_expiry(fast_settings: Settings) -> None:
    issued = _now() - dt.timedelta(seconds=fast_settings.access_token_ttl_s - 60)
    token, _ = create_access_token(fast_settings, user_id=1, role="viewer", now=issued)
    assert decode_access_token(fast_settings, token).user_id == 1


def test_decode_access_token__wrong_issuer(fast_settings: Settings) -> None:
    token, _ = create_access_token(
        make_settings(jwt_issuer="someone-else"), user_id=1, role="admin", now=_now()
    )
    with pytest.raises(InvalidToken, match="not valid"):
        decode_access_token(fast_settings, token)


def test_decode_access_token__wrong_secret(fast_settings: Settings) -> None:
    token, _ = create_access_token(make_settings(jwt_secret="z" * 48), user_id=1, role="admin", now=_now())
    with pytest.raises(InvalidToken, match="signature"):
        decode_access_token(fast_settings, token)


def test_decode_access_token__previous_secret_accepted() -> None:
    old = make_settings(jwt_secret=OLD_SECRET)
    rotated = make_settings(jwt_previous_secrets=[OLD_SECRET])
    token, _ = create_access_token(old, user_id=9, role="analyst", now=_now())
    claims = decode_access_token(rotated, token)
    assert (claims.user_id, claims.role) == (9, "analyst")
    # New tokens are signed with the new secret, which the old deployment does not know.
    new_token, _ = create_access_token(rotated, user_id=9, role="analyst", now=_now())
    assert jwt.decode(new_token, TEST_JWT_SECRET, algorithms=["HS256"], issuer="finsecure")["sub"] == "9"
    with pytest.raises(InvalidToken):
        decode_access_token(old, new_token)


def test_decode_access_token__retired_secret_refused() -> None:
    token, _ = create_access_token(make_settings(jwt_secret=OLD_SECRET), user_id=9, role="admin", now=_now())
    with pytest.raises(InvalidToken, match="signature"):
        decode_access_token(make_settings(), token)


def test_decode_access_token__expired_with_previous_secret(fast_settings: Settings) -> None:
    issued = _now() - dt.timedelta(hours=2)
    token, _ = create_access_token(make_settings(jwt_secret=OLD_SECRET), user_id=1, role="admin", now=issued)
    with pytest.raises(InvalidToken, match="expired"):
        decode_access_token(make_settings(jwt_previous_secrets=[OLD_SECRET]), token)


def test_decode_access_token__alg_none_refused(fast_settings: Settings) -> None:
    header = _b64({"alg": "none", "typ": "JWT"})
    unsigned = f"{header}.{_b64(_claims())}."
    with pytest.raises(InvalidToken):
        decode_access_token(fast_settings, unsigned)
    # Also with a valid HS256 signature glued on: the header still says "none".
    signed = jwt.encode(_claims(), TEST_JWT_SECRET, algorithm="HS256")
    forged = f"{header}.{_b64(_claims())}.{signed.rsplit('.', 1)[1]}"
    with pytest.raises(InvalidToken):
        decode_access_token(fast_settings, forged)


def test_decode_access_token__other_hmac_algorithm_refused(fast_settings: Settings) -> None:
    token = jwt.encode(_claims(), TEST_JWT_SECRET, algorithm="HS384")
    with pytest.raises(InvalidToken):
        decode_access_token(fast_settings, token)


def test_decode_access_token__hand_made_valid_token_accepted(fast_settings: Settings) -> None:
    # Control for the tests below: the same claims, correctly signed, are accepted.
    token = jwt.encode(_claims(), TEST_JWT_SECRET, algorithm="HS256")
    assert decode_access_token(fast_settings, token).user_id == 7


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"type": "refresh"}, "not an access token"),
        ({"type": None}, "not an access token"),
        ({"jti": None}, "not valid"),
        ({"exp": None}, "not valid"),
        ({"iat": None}, "not valid"),
        ({"iss": None}, "not valid"),
        ({"sub": None}, "not valid"),
        ({"sub": "abc"}, "no valid user"),
    ],
    ids=["refresh-type", "no-type", "no-jti", "no-exp", "no-iat", "no-iss", "no-sub", "non-numeric-sub"],
)
def test_decode_access_token__bad_claims(
    fast_settings: Settings, overrides: dict[str, Any], message: str
) -> None:
    token = jwt.encode(_claims(**overrides), TEST_JWT_SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken, match=message):
        decode_access_token(fast_settings, token)


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "x" * 5000, "Bearer abc.def.ghi"])
def test_decode_access_token__garbage(fast_settings: Settings, garbage: str) -> None:
    with pytest.raises(InvalidToken):
        decode_access_token(fast_settings, garbage)


def test_decode_access_token__tampered_payload(fast_settings: Settings) -> None:
    token, _ = create_access_token(fast_settings, user_id=1, role="viewer", now=_now())
    header, _payload, signature = token.split(".")
    forged = f"{header}.{_b64(_claims(sub='1', role='admin'))}.{signature}"
    with pytest.raises(InvalidToken, match="signature"):
        decode_access_token(fast_settings, forged)


# --- API keys and opaque secrets --------------------------------------------------------------------


def test_new_api_key__well_formed() -> None:
    key, prefix = new_api_key()
    assert key.startswith(f"{API_KEY_PREFIX}_{prefix}_")
    assert len(prefix) == 12
    assert all(c in string.hexdigits for c in prefix)
    assert parse_api_key(key) == prefix


def test_new_api_key__unique() -> None:
    keys = [new_api_key() for _ in range(50)]
    assert len({k for k, _ in keys}) == 50
    assert len({p for _, p in keys}) == 50


def test_parse_api_key__secret_with_underscores() -> None:
    key = f"fsk_0123456789ab_{'_' * 5}{'a' * 40}"
    assert parse_api_key(key) == "0123456789ab"


@pytest.mark.parametrize(
    "key",
    [
        "",
        "fsk",
        "fsk_",
        "fsk_0123456789ab",
        "fsk_0123456789ab_",
        "fsk_0123456789ab_" + "a" * 31,  # secret too short
        "fsk_0123456789a_" + "a" * 40,  # prefix too short
        "fsk_0123456789abc_" + "a" * 40,  # prefix too long
        "FSK_0123456789ab_" + "a" * 40,  # wrong case of the marker
        "sk_0123456789ab_" + "a" * 40,
        "xyz_0123456789ab_" + "a" * 40,
        "fsk-0123456789ab-" + "a" * 40,
        "Bearer fsk_0123456789ab_" + "a" * 40,
    ],
)
def test_parse_api_key__malformed(key: str) -> None:
    assert parse_api_key(key) is None


def test_hash_secret__deterministic_sha256() -> None:
    assert hash_secret("abc") == hash_secret("abc")
    assert hash_secret("abc") == hashlib.sha256(b"abc").hexdigest()
    assert hash_secret("abc") != hash_secret("abd")
    assert len(hash_secret("")) == 64
    assert hash_secret("ünïcode") == hashlib.sha256("ünïcode".encode()).hexdigest()


def test_secrets_equal() -> None:
    assert secrets_equal("abc", "abc") is True
    assert secrets_equal("abc", "abd") is False
    assert secrets_equal("abc", "abcd") is False
    assert secrets_equal("ü", "ü") is True


def test_new_refresh_token__random_and_long() -> None:
    tokens = {new_refresh_token() for _ in range(20)}
    assert len(tokens) == 20
    assert all(len(t) >= 64 for t in tokens)


def test_generate_password__alphabet_and_length() -> None:
    password = generate_password()
    assert len(password) == 20
    assert set(password) <= set(string.ascii_letters + string.digits)
    assert len(generate_password(32)) == 32
    assert generate_password() != generate_password()
