"""Request and response bodies for sign-in, users and API keys."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from finsecure.auth.models import Role
from finsecure.core.schemas import ApiModel

Username = Annotated[str, StringConstraints(min_length=3, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")]
Password = Annotated[str, StringConstraints(min_length=12, max_length=256, strip_whitespace=False)]
Email = Annotated[str, StringConstraints(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
FullName = Annotated[str, StringConstraints(max_length=128)]


class Scope(enum.StrEnum):
    """What an API key may do. ``ingest``: push events; ``read``: read alerts and incidents."""

    ingest = "ingest"
    read = "read"


class TokenPair(ApiModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int = Field(description="Seconds until the access token expires")
    refresh_expires_in: int


class RefreshRequest(ApiModel):
    refresh_token: Annotated[str, StringConstraints(min_length=1, max_length=512)]


class PasswordChange(ApiModel):
    current_password: Annotated[str, StringConstraints(min_length=1, max_length=256, strip_whitespace=False)]
    new_password: Password

    @model_validator(mode="after")
    def _differs(self) -> PasswordChange:
        if self.current_password == self.new_password:
            raise ValueError("the new password must differ from the current one")
        return self


class UserCreate(ApiModel):
    username: Username
    password: Password | None = Field(
        default=None, description="Leave empty to generate a one-time password that must be changed"
    )
    full_name: FullName = ""
    email: Email | None = None
    role: Role = Role.viewer

    @model_validator(mode="after")
    def _password_not_username(self) -> UserCreate:
        if self.password is not None and self.password.lower() == self.username.lower():
            raise ValueError("the password must not be the username")
        return self


class UserUpdate(ApiModel):
    full_name: FullName | None = None
    email: Email | None = None
    role: Role | None = None
    # strict: only JSON true/false, never "no" or 0 read as a boolean
    disabled: bool | None = Field(default=None, strict=True)
    password: Password | None = Field(
        default=None, description="Set a new password; the user must change it at next sign-in"
    )


class UserRead(ApiModel):
    id: int
    username: str
    full_name: str
    email: str | None
    role: Role
    disabled: bool
    must_change_password: bool
    created_at: dt.datetime
    last_login_at: dt.datetime | None


class UserCreated(UserRead):
    one_time_password: str | None = Field(
        default=None, description="Shown once, only when the password was generated"
    )


class UserPage(ApiModel):
    items: list[UserRead]
    total: int
    page: int
    size: int


class ApiKeyCreate(ApiModel):
    name: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    scopes: list[Scope] = Field(min_length=1, max_length=len(Scope))
    # strict: JSON `true` must not quietly become a one-day key (found by the API fuzzer)
    expires_in_days: int | None = Field(
        default=90, ge=1, le=3650, strict=True, description="Empty for a key that never expires"
    )


class ApiKeyRead(ApiModel):
    id: int
    name: str
    prefix: str
    scopes: list[Scope]
    owner_id: int | None
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None


class ApiKeyCreated(ApiKeyRead):
    key: str = Field(description="The key itself. Shown once: store it now")


class ApiKeyPage(ApiModel):
    items: list[ApiKeyRead]
    total: int
    page: int
    size: int
