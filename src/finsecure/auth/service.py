"""Users, sign-in, refresh-token rotation and API keys.

Every function that changes state writes an audit entry in the same transaction and commits.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any, NoReturn, cast

from sqlalchemy import CursorResult, func, select
from sqlalchemy import update as sql_update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from finsecure.audit import service as audit_service
from finsecure.audit.service import Actor
from finsecure.auth.models import ApiKey, RefreshToken, Role, User
from finsecure.auth.schemas import ApiKeyCreate, PasswordChange, TokenPair, UserCreate, UserUpdate
from finsecure.core.database import utcnow
from finsecure.core.errors import BadRequest, Conflict, NotFound, TooManyRequests, Unauthorized
from finsecure.core.ratelimit import RateLimiter
from finsecure.core.security import (
    Passwords,
    create_access_token,
    generate_password,
    hash_secret,
    new_api_key,
    new_refresh_token,
    parse_api_key,
    secrets_equal,
)
from finsecure.core.settings import Settings

# --- users -----------------------------------------------------------------------------------------


def get(*, db_session: Session, user_id: int) -> User | None:
    return db_session.get(User, user_id)


def get_or_raise(*, db_session: Session, user_id: int) -> User:
    user = get(db_session=db_session, user_id=user_id)
    if user is None:
        raise NotFound(f"No user with id {user_id}")
    return user


def get_by_username(*, db_session: Session, username: str) -> User | None:
    return db_session.scalar(select(User).where(func.lower(User.username) == username.lower()))


def get_all(*, db_session: Session, offset: int, limit: int) -> tuple[list[User], int]:
    total = db_session.scalar(select(func.count()).select_from(User)) or 0
    rows = db_session.scalars(select(User).order_by(User.id).offset(offset).limit(limit)).all()
    return list(rows), total


def count_active_admins(*, db_session: Session) -> int:
    query = select(func.count()).select_from(User).where(User.role == Role.admin, User.disabled.is_(False))
    return db_session.scalar(query) or 0


def create(
    *, db_session: Session, passwords: Passwords, user_in: UserCreate, actor: Actor
) -> tuple[User, str | None]:
    """Create a user. Without a password, a one-time password is generated and returned once."""
    if get_by_username(db_session=db_session, username=user_in.username) is not None:
        raise Conflict(f"The username {user_in.username!r} is taken", code="username_taken")
    one_time = None if user_in.password is not None else generate_password()
    user = User(
        username=user_in.username,
        full_name=user_in.full_name,
        email=user_in.email,
        role=user_in.role,
        password_hash=passwords.hash(user_in.password or one_time or ""),
        must_change_password=one_time is not None,
        disabled=False,
    )
    db_session.add(user)
    try:
        db_session.flush()
    except IntegrityError as exc:  # a concurrent create of the same name
        db_session.rollback()
        raise Conflict(f"The username {user_in.username!r} is taken", code="username_taken") from exc
    audit_service.record(
        db_session=db_session,
        actor=actor,
        action="user.create",
        target_type="user",
        target_id=user.id,
        after=user.audit_view(),
    )
    db_session.commit()
    return user, one_time


def update(
    *, db_session: Session, passwords: Passwords, user: User, user_in: UserUpdate, actor: Actor
) -> User:
    """Change a user's profile, role, status or password (an admin reset forces a change at sign-in)."""
    before = user.audit_view()
    # An explicit null means "leave as is" for every field but ``email``, where it clears the address;
    # dropping the nulls here keeps ``{"role": null}`` from counting as a demotion below.
    changes = {
        field: value
        for field, value in user_in.model_dump(exclude_unset=True).items()
        if value is not None or field == "email"
    }
    removes_admin = (
        user.role == Role.admin
        and not user.disabled
        and (changes.get("disabled") is True or changes.get("role", Role.admin) != Role.admin)
    )
    if removes_admin and count_active_admins(db_session=db_session) <= 1:
        raise Conflict("This is the last active admin; make another admin first", code="last_admin")
    for field in ("full_name", "email", "role", "disabled"):
        if field in changes:
            setattr(user, field, changes[field])
    password_reset = changes.get("password") is not None
    if password_reset:
        user.password_hash = passwords.hash(changes["password"])
        user.must_change_password = True
    if user.disabled or password_reset:
        revoke_all_refresh_tokens(db_session=db_session, user_id=user.id)
    after = user.audit_view()
    if password_reset:
        after["password"] = "reset"  # noqa: S105 - records that a reset happened, never the value
    audit_service.record(
        db_session=db_session,
        actor=actor,
        action="user.update",
        target_type="user",
        target_id=user.id,
        before=before,
        after=after,
    )
    db_session.commit()
    return user


def change_password(
    *, db_session: Session, passwords: Passwords, user: User, change: PasswordChange, actor: Actor
) -> None:
    """A user changes their own password; every other session of theirs is signed out."""
    if not passwords.verify(user.password_hash, change.current_password):
        raise BadRequest("The current password is wrong", code="wrong_password")
    if change.new_password.lower() == user.username.lower():
        raise BadRequest("The password must not be the username", code="weak_password")
    user.password_hash = passwords.hash(change.new_password)
    user.must_change_password = False
    revoke_all_refresh_tokens(db_session=db_session, user_id=user.id)
    audit_service.record(
        db_session=db_session,
        actor=actor,
        action="user.password_change",
        target_type="user",
        target_id=user.id,
    )
    db_session.commit()


def ensure_first_admin(
    *, db_session: Session, passwords: Passwords, username: str, password: str | None
) -> tuple[User | None, str | None]:
    """Create the first admin when no admin exists.

    Returns the new user (``None`` if an admin already exists) and, when no password was given,
    the generated one-time password.
    """
    exists = db_session.scalar(select(func.count()).select_from(User).where(User.role == Role.admin))
    if exists:
        return None, None
    user_in = UserCreate.model_construct(
        username=username, password=password, full_name="Administrator", email=None, role=Role.admin
    )
    return create(
        db_session=db_session, passwords=passwords, user_in=user_in, actor=Actor(label="system:setup")
    )


# --- sign-in ---------------------------------------------------------------------------------------


def authenticate(
    *,
    db_session: Session,
    settings: Settings,
    passwords: Passwords,
    limiter: RateLimiter,
    username: str,
    password: str,
    ip: str,
) -> User:
    """Check a username and password, throttling failures per user and per client address."""
    window = settings.login_failure_window_s
    user_key, ip_key = f"login:user:{username.lower()}", f"login:ip:{ip}"
    for key, limit in (
        (user_key, settings.login_max_failures_per_user),
        (ip_key, settings.login_max_failures_per_ip),
    ):
        if limiter.count(key, window) >= limit:
            retry = max(1, int(limiter.retry_after(key, window)) + 1)
            raise TooManyRequests(
                f"Too many failed sign-ins; try again in {retry} seconds",
                code="login_throttled",
                headers={"Retry-After": str(retry)},
            )
    user = get_by_username(db_session=db_session, username=username)
    password_hash = user.password_hash if user else None
    # End the read before the slow hash check: on SQLite a read transaction cannot turn into a write
    # once another connection (the live pipeline) has committed meanwhile ("database is locked").
    db_session.commit()
    ok = passwords.verify(password_hash, password)
    if user is None or not ok or user.disabled:
        limiter.hit(user_key, window)
        limiter.hit(ip_key, window)
        audit_service.record(
            db_session=db_session,
            actor=Actor(label=f"anonymous:{username[:64]}", ip=ip),
            action="auth.login_failed",
            target_type="user",
            target_id=user.id if user else None,
            after={"reason": "disabled" if user is not None and ok else "bad_credentials"},
        )
        db_session.commit()
        raise Unauthorized("Wrong username or password", code="bad_credentials")
    limiter.reset(user_key)
    if passwords.needs_rehash(user.password_hash):
        user.password_hash = passwords.hash(password)
    user.last_login_at = utcnow()
    audit_service.record(
        db_session=db_session,
        actor=Actor(label=user.username, user_id=user.id, ip=ip),
        action="auth.login",
        target_type="user",
        target_id=user.id,
    )
    db_session.commit()
    return user


def issue_tokens(
    *, db_session: Session, settings: Settings, user: User, family: str | None = None
) -> TokenPair:
    """An access token and a refresh token; the refresh token joins ``family`` (new sign-in: new family)."""
    now = utcnow()
    access, ttl = create_access_token(settings, user_id=user.id, role=user.role.value, now=now)
    raw_refresh = new_refresh_token()
    db_session.add(
        RefreshToken(
            token_hash=hash_secret(raw_refresh),
            family=family or secrets.token_hex(16),
            user_id=user.id,
            created_at=now,
            expires_at=now + dt.timedelta(seconds=settings.refresh_token_ttl_s),
        )
    )
    db_session.commit()
    return TokenPair(
        access_token=access,
        refresh_token=raw_refresh,
        expires_in=ttl,
        refresh_expires_in=settings.refresh_token_ttl_s,
    )


def _get_refresh(db_session: Session, raw: str) -> RefreshToken | None:
    return db_session.scalar(select(RefreshToken).where(RefreshToken.token_hash == hash_secret(raw)))


def rotate_refresh_token(*, db_session: Session, settings: Settings, raw: str, ip: str) -> TokenPair:
    """Swap a refresh token for a new pair. A token used twice means it was stolen: the family dies.

    A token that was revoked (sign-out, password change, disabled account) but never used is refused
    without raising the alarm: presenting it again is what a stale client does, not evidence of theft.
    """
    token = _get_refresh(db_session, raw)
    now = utcnow()
    if token is None:
        raise Unauthorized("The refresh token is not valid", code="invalid_refresh_token")
    if token.used_at is not None:
        _refresh_reused(db_session=db_session, token=token, ip=ip)
    if token.revoked_at is not None:
        raise Unauthorized("The refresh token was revoked; sign in again", code="refresh_token_revoked")
    if token.expires_at <= now:
        raise Unauthorized("The refresh token has expired; sign in again", code="refresh_token_expired")
    user = get(db_session=db_session, user_id=token.user_id)
    if user is None or user.disabled:
        raise Unauthorized("The account is disabled", code="account_disabled")
    # Claim the token atomically: of two concurrent requests with the same token only one may win,
    # the other is a reuse (checking ``used_at`` above and setting it later would let both through).
    claimed = cast(
        "CursorResult[Any]",
        db_session.execute(
            sql_update(RefreshToken)
            .where(
                RefreshToken.id == token.id, RefreshToken.used_at.is_(None), RefreshToken.revoked_at.is_(None)
            )
            .values(used_at=now)
        ),
    )
    if claimed.rowcount != 1:
        _refresh_reused(db_session=db_session, token=token, ip=ip)
    return issue_tokens(db_session=db_session, settings=settings, user=user, family=token.family)


def _refresh_reused(*, db_session: Session, token: RefreshToken, ip: str) -> NoReturn:
    """Revoke the family of a token presented a second time, record it, and refuse."""
    revoke_family(db_session=db_session, family=token.family)
    audit_service.record(
        db_session=db_session,
        actor=Actor(label="system:token-guard", ip=ip),
        action="auth.refresh_reuse",
        target_type="user",
        target_id=token.user_id,
        after={"family": token.family},
    )
    db_session.commit()
    raise Unauthorized(
        "This refresh token was already used; every session from that sign-in is now closed",
        code="refresh_token_reused",
    )


def revoke_family(*, db_session: Session, family: str) -> None:
    db_session.execute(
        sql_update(RefreshToken)
        .where(RefreshToken.family == family, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


def revoke_all_refresh_tokens(*, db_session: Session, user_id: int) -> None:
    db_session.execute(
        sql_update(RefreshToken)
        .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


def logout(*, db_session: Session, user: User, raw: str, actor: Actor) -> None:
    """Close the sign-in that ``raw`` belongs to (only the caller's own tokens)."""
    token = _get_refresh(db_session, raw)
    if token is None or token.user_id != user.id:
        raise BadRequest("That refresh token is not one of yours", code="invalid_refresh_token")
    revoke_family(db_session=db_session, family=token.family)
    audit_service.record(
        db_session=db_session, actor=actor, action="auth.logout", target_type="user", target_id=user.id
    )
    db_session.commit()


# --- API keys --------------------------------------------------------------------------------------


def get_api_key(*, db_session: Session, api_key_id: int) -> ApiKey:
    api_key = db_session.get(ApiKey, api_key_id)
    if api_key is None:
        raise NotFound(f"No API key with id {api_key_id}")
    return api_key


def get_all_api_keys(*, db_session: Session, offset: int, limit: int) -> tuple[list[ApiKey], int]:
    total = db_session.scalar(select(func.count()).select_from(ApiKey)) or 0
    rows = db_session.scalars(select(ApiKey).order_by(ApiKey.id).offset(offset).limit(limit)).all()
    return list(rows), total


def create_api_key(
    *, db_session: Session, key_in: ApiKeyCreate, owner_id: int | None, actor: Actor
) -> tuple[ApiKey, str]:
    """Create a key; the raw key is returned once and only its hash is stored."""
    raw, prefix = new_api_key()
    now = utcnow()
    api_key = ApiKey(
        name=key_in.name,
        prefix=prefix,
        key_hash=hash_secret(raw),
        scopes=sorted({s.value for s in key_in.scopes}),
        owner_id=owner_id,
        created_at=now,
        expires_at=now + dt.timedelta(days=key_in.expires_in_days) if key_in.expires_in_days else None,
    )
    db_session.add(api_key)
    db_session.flush()
    audit_service.record(
        db_session=db_session,
        actor=actor,
        action="apikey.create",
        target_type="api_key",
        target_id=api_key.id,
        after=api_key.audit_view(),
    )
    db_session.commit()
    return api_key, raw


def revoke_api_key(*, db_session: Session, api_key: ApiKey, actor: Actor) -> ApiKey:
    if api_key.revoked_at is not None:
        return api_key
    before = api_key.audit_view()
    api_key.revoked_at = utcnow()
    audit_service.record(
        db_session=db_session,
        actor=actor,
        action="apikey.revoke",
        target_type="api_key",
        target_id=api_key.id,
        before=before,
        after=api_key.audit_view(),
    )
    db_session.commit()
    return api_key


def revoke_api_key_by_prefix(*, db_session: Session, prefix: str, actor: Actor) -> ApiKey:
    api_key = db_session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if api_key is None:
        raise NotFound(f"No API key with prefix {prefix!r}")
    return revoke_api_key(db_session=db_session, api_key=api_key, actor=actor)


def authenticate_api_key(*, db_session: Session, raw: str) -> ApiKey | None:
    """The active key matching ``raw``, or ``None``; ``last_used_at`` is refreshed at most once a minute."""
    prefix = parse_api_key(raw)
    if prefix is None:
        return None
    api_key = db_session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    now = utcnow()
    if api_key is None or not secrets_equal(api_key.key_hash, hash_secret(raw)) or not api_key.is_active(now):
        return None
    if api_key.last_used_at is None or now - api_key.last_used_at > dt.timedelta(minutes=1):
        api_key.last_used_at = now
        db_session.commit()
    return api_key
