"""Who is calling: FastAPI dependencies for people (bearer tokens, roles) and machines (API keys)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer

from finsecure.audit.service import Actor
from finsecure.auth import service as auth_service
from finsecure.auth.models import ApiKey, Role, User
from finsecure.auth.schemas import Scope
from finsecure.core.deps import Context, DbSession, client_ip
from finsecure.core.errors import Forbidden, Unauthorized
from finsecure.core.security import InvalidToken, decode_access_token

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/auth/token", auto_error=False)
api_key_scheme = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="A machine key, e.g. for ingestion"
)


def _user_from_token(token: str | None, ctx: Context, db_session: DbSession) -> User:
    if not token:
        raise Unauthorized()
    try:
        claims = decode_access_token(ctx.settings, token)
    except InvalidToken as exc:
        raise Unauthorized(f"Sign in again: {exc}", code="invalid_token") from exc
    user = auth_service.get(db_session=db_session, user_id=claims.user_id)
    if user is None or user.disabled:
        raise Unauthorized("This account no longer exists or is disabled", code="account_disabled")
    return user


def get_user_pending_password(
    token: Annotated[str | None, Depends(oauth2_scheme)], ctx: Context, db_session: DbSession
) -> User:
    """The signed-in user, even one who still has to replace a one-time password."""
    return _user_from_token(token, ctx, db_session)


def get_current_user(user: Annotated[User, Depends(get_user_pending_password)]) -> User:
    """The signed-in user, who must have replaced any one-time password first."""
    if user.must_change_password:
        raise Forbidden(
            "Change your one-time password first (POST /api/auth/password)", code="password_change_required"
        )
    return user


UserPendingPassword = Annotated[User, Depends(get_user_pending_password)]
CurrentUser = Annotated[User, Depends(get_current_user)]


class RequireRole:
    """Depend on this to allow only ``role`` and the roles above it."""

    def __init__(self, role: Role) -> None:
        self.role = role

    def __call__(self, user: CurrentUser) -> User:
        if not user.role.includes(self.role):
            raise Forbidden(
                f"This needs the {self.role.value} role; you are {user.role.value}", code="role_required"
            )
        return user


ViewerUser = Annotated[User, Depends(RequireRole(Role.viewer))]
AnalystUser = Annotated[User, Depends(RequireRole(Role.analyst))]
AdminUser = Annotated[User, Depends(RequireRole(Role.admin))]


def get_api_key(raw: Annotated[str | None, Depends(api_key_scheme)], db_session: DbSession) -> ApiKey:
    if not raw:
        raise Unauthorized(
            "This needs an API key in the X-API-Key header", headers={"WWW-Authenticate": "ApiKey"}
        )
    api_key = auth_service.authenticate_api_key(db_session=db_session, raw=raw)
    if api_key is None:
        raise Unauthorized(
            "The API key is unknown, revoked or expired",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "ApiKey"},
        )
    return api_key


CurrentApiKey = Annotated[ApiKey, Depends(get_api_key)]


class RequireScope:
    """Depend on this to allow only API keys that carry ``scope``."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    def __call__(self, api_key: CurrentApiKey) -> ApiKey:
        if self.scope.value not in api_key.scopes:
            raise Forbidden(f"This API key lacks the {self.scope.value!r} scope", code="scope_required")
        return api_key


IngestKey = Annotated[ApiKey, Depends(RequireScope(Scope.ingest))]


def user_actor(user: User, request: Request) -> Actor:
    return Actor(label=user.username, user_id=user.id, ip=client_ip(request))


def api_key_actor(api_key: ApiKey, request: Request) -> Actor:
    return Actor(label=f"api_key:{api_key.prefix}:{api_key.name}", ip=client_ip(request))
