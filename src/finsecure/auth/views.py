"""Sign-in, tokens, the caller's own account, user management and API keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.security import OAuth2PasswordRequestForm

from finsecure.auth import service as auth_service
from finsecure.auth.deps import AdminUser, CurrentApiKey, UserPendingPassword, user_actor
from finsecure.auth.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyPage,
    ApiKeyRead,
    PasswordChange,
    RefreshRequest,
    TokenPair,
    UserCreate,
    UserCreated,
    UserPage,
    UserRead,
    UserUpdate,
)
from finsecure.core.deps import Context, DbSession, Page, client_ip
from finsecure.core.errors import BadRequest, Unauthorized, error_responses
from finsecure.core.schemas import RowId

auth_router = APIRouter(prefix="/auth", tags=["auth"])
users_router = APIRouter(prefix="/users", tags=["users"])
apikeys_router = APIRouter(prefix="/apikeys", tags=["api keys"])


@auth_router.post(
    "/token",
    response_model=TokenPair,
    summary="Sign in (OAuth2 password flow)",
    responses=error_responses(400, 401, 413, 422, 429),
)
def sign_in(
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    request: Request,
    ctx: Context,
    db_session: DbSession,
) -> TokenPair:
    if len(form.username) > 64 or len(form.password) > 256:
        raise BadRequest("Username or password is too long", code="bad_credentials_format")
    if "\x00" in form.username or "\x00" in form.password:
        raise Unauthorized("Wrong username or password", code="bad_credentials")
    user = auth_service.authenticate(
        db_session=db_session,
        settings=ctx.settings,
        passwords=ctx.passwords,
        limiter=ctx.login_limiter,
        username=form.username,
        password=form.password,
        ip=client_ip(request),
    )
    return auth_service.issue_tokens(db_session=db_session, settings=ctx.settings, user=user)


@auth_router.post(
    "/refresh",
    response_model=TokenPair,
    summary="Swap a refresh token for new tokens",
    responses=error_responses(400, 401, 413, 422),
)
def refresh(body: RefreshRequest, request: Request, ctx: Context, db_session: DbSession) -> TokenPair:
    return auth_service.rotate_refresh_token(
        db_session=db_session, settings=ctx.settings, raw=body.refresh_token, ip=client_ip(request)
    )


@auth_router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Sign out this session",
    responses=error_responses(400, 401, 413, 422),
)
def logout(
    body: RefreshRequest, user: UserPendingPassword, request: Request, db_session: DbSession
) -> Response:
    auth_service.logout(
        db_session=db_session, user=user, raw=body.refresh_token, actor=user_actor(user, request)
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@auth_router.get("/me", response_model=UserRead, summary="The signed-in user", responses=error_responses(401))
def me(user: UserPendingPassword) -> UserRead:
    return UserRead.model_validate(user)


@auth_router.post(
    "/password",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Change your own password",
    responses=error_responses(400, 401, 413, 422),
)
def change_password(
    body: PasswordChange, user: UserPendingPassword, request: Request, ctx: Context, db_session: DbSession
) -> Response:
    auth_service.change_password(
        db_session=db_session,
        passwords=ctx.passwords,
        user=user,
        change=body,
        actor=user_actor(user, request),
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@auth_router.get(
    "/key",
    response_model=ApiKeyRead,
    summary="Describe the calling API key",
    responses=error_responses(401),
)
def describe_api_key(api_key: CurrentApiKey) -> ApiKeyRead:
    return ApiKeyRead.model_validate(api_key)


@users_router.get("", response_model=UserPage, summary="List users", responses=error_responses(401, 403, 422))
def list_users(_admin: AdminUser, db_session: DbSession, page: Page) -> UserPage:
    users, total = auth_service.get_all(db_session=db_session, offset=page.offset, limit=page.size)
    return UserPage(
        items=[UserRead.model_validate(u) for u in users], total=total, page=page.page, size=page.size
    )


@users_router.post(
    "",
    response_model=UserCreated,
    status_code=status.HTTP_201_CREATED,
    summary="Create a user",
    responses=error_responses(400, 401, 403, 409, 413, 422),
)
def create_user(
    body: UserCreate, admin: AdminUser, request: Request, ctx: Context, db_session: DbSession
) -> UserCreated:
    user, one_time = auth_service.create(
        db_session=db_session, passwords=ctx.passwords, user_in=body, actor=user_actor(admin, request)
    )
    return UserCreated.model_validate(
        {**UserRead.model_validate(user).model_dump(), "one_time_password": one_time}
    )


@users_router.get(
    "/{user_id}",
    response_model=UserRead,
    summary="One user",
    responses=error_responses(401, 403, 404, 422),
)
def get_user(user_id: RowId, _admin: AdminUser, db_session: DbSession) -> UserRead:
    return UserRead.model_validate(auth_service.get_or_raise(db_session=db_session, user_id=user_id))


@users_router.patch(
    "/{user_id}",
    response_model=UserRead,
    summary="Change a user's role, status or password",
    responses=error_responses(400, 401, 403, 404, 409, 413, 422),
)
def update_user(
    user_id: RowId, body: UserUpdate, admin: AdminUser, request: Request, ctx: Context, db_session: DbSession
) -> UserRead:
    user = auth_service.get_or_raise(db_session=db_session, user_id=user_id)
    updated = auth_service.update(
        db_session=db_session,
        passwords=ctx.passwords,
        user=user,
        user_in=body,
        actor=user_actor(admin, request),
    )
    return UserRead.model_validate(updated)


@apikeys_router.get(
    "", response_model=ApiKeyPage, summary="List API keys", responses=error_responses(401, 403, 422)
)
def list_api_keys(_admin: AdminUser, db_session: DbSession, page: Page) -> ApiKeyPage:
    keys, total = auth_service.get_all_api_keys(db_session=db_session, offset=page.offset, limit=page.size)
    return ApiKeyPage(
        items=[ApiKeyRead.model_validate(k) for k in keys], total=total, page=page.page, size=page.size
    )


@apikeys_router.post(
    "",
    response_model=ApiKeyCreated,
    status_code=status.HTTP_201_CREATED,
    summary="Create an API key",
    responses=error_responses(400, 401, 403, 413, 422),
)
def create_api_key(
    body: ApiKeyCreate, admin: AdminUser, request: Request, db_session: DbSession
) -> ApiKeyCreated:
    api_key, raw = auth_service.create_api_key(
        db_session=db_session, key_in=body, owner_id=admin.id, actor=user_actor(admin, request)
    )
    return ApiKeyCreated.model_validate({**ApiKeyRead.model_validate(api_key).model_dump(), "key": raw})


@apikeys_router.delete(
    "/{api_key_id}",
    response_model=ApiKeyRead,
    summary="Revoke an API key",
    responses=error_responses(401, 403, 404, 422),
)
def revoke_api_key(
    api_key_id: RowId, admin: AdminUser, request: Request, db_session: DbSession
) -> ApiKeyRead:
    api_key = auth_service.get_api_key(db_session=db_session, api_key_id=api_key_id)
    revoked = auth_service.revoke_api_key(
        db_session=db_session, api_key=api_key, actor=user_actor(admin, request)
    )
    return ApiKeyRead.model_validate(revoked)
