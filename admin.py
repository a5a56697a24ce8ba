"""The administrator's routes: list and read every account, change its role, disable it, delete it, end its sessions.

Every route needs the `admin` scope, which only the `admin` role is granted. A change that would leave no enabled
administrator is refused, and every action writes one log line: who did what to whom.
"""

import logging
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, status
from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator
from pydantic.json_schema import SkipJsonSchema
from sqlalchemy import ColumnElement, Select, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session

import sessions
from auth import BAD_TOKEN_RESPONSE, BUSY_RESPONSE, SCOPE_RESPONSE, Administrator, Detail, SignedInUser, invalid_token
from database import in_session
from models import LoginSession, User
from roles import Role
from sessions import SessionRow
from users import (
    ENABLED_ADMINISTRATOR,
    LAST_ADMINISTRATOR,
    SessionInfo,
    lock_accounts,
    refuse_if_no_administrator_left,
)

logger = logging.getLogger(__name__)

NO_SUCH_USER = "No user has this id"

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    responses={
        **BAD_TOKEN_RESPONSE,
        **SCOPE_RESPONSE,
        status.HTTP_404_NOT_FOUND: {"model": Detail, "description": NO_SUCH_USER},
        **BUSY_RESPONSE,
    },
)


class Account(BaseModel):
    """A user as an administrator sees it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    role: Role
    disabled: bool
    created_at: datetime | None = Field(description="When it signed up, in UTC; null for accounts made before 1.2")
    live_sessions: int = Field(description="Sessions that have not ended nor run out")


class AccountPage(BaseModel):
    users: list[Account]
    next_after: int | None = Field(description="The `after` that asks for the next page; null on the last page")


class AccountChange(BaseModel):
    """Either field, or both; leave out what does not change. null is neither a role nor a flag, and `disabled` takes
    only true or false: "yes" and 0 are refused."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    role: Role | SkipJsonSchema[None] = None
    disabled: StrictBool | SkipJsonSchema[None] = None

    @model_validator(mode="after")
    def changes_something(self) -> "AccountChange":
        given = self.model_dump(exclude_unset=True)
        if not given:
            raise ValueError("Give role, disabled, or both")
        if None in given.values():
            raise ValueError("Leave out what does not change: null is neither a role nor a flag")
        return self


def accounts(*conditions: ColumnElement[bool]) -> Select[Any]:
    """Users with their live sessions counted: one query, the count from the sessions' index on user_id."""
    live_sessions = (
        select(func.count())
        .where(LoginSession.user_id == User.id, LoginSession.ends_at > time.time())
        .correlate(User)
        .scalar_subquery()
    )
    columns = User.id, User.username, User.role, User.disabled, User.created_at, live_sessions.label("live_sessions")
    return select(*columns).where(*conditions)


def read_page(session: Session, after: int, limit: int) -> AccountPage:
    """Keyset pagination: the ids after the last one seen, in order. No OFFSET, so page 10,000 costs what page 1
    costs, and a user added meanwhile neither shifts a page nor repeats one."""
    rows = session.execute(accounts(User.id > after).order_by(User.id).limit(limit + 1)).all()
    page = [Account.model_validate(row) for row in rows[:limit]]
    return AccountPage(users=page, next_after=page[-1].id if len(rows) > limit else None)


def read_account(session: Session, user_id: int) -> Account:
    row = session.execute(accounts(User.id == user_id)).first()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, NO_SUCH_USER)
    return Account.model_validate(row)


def lock_as_administrator(session: Session, admin: SignedInUser, user_id: int) -> None:
    """Lock what the change depends on, then check again, as it now is, that the actor is an enabled administrator:
    one demoted or disabled while this change waited for the lock changes nothing (401, as their token now gets)."""
    lock_accounts(session, admin.id, user_id)
    if session.scalar(select(User.id).where(User.id == admin.id, *ENABLED_ADMINISTRATOR)) is None:
        session.rollback()
        raise invalid_token()


def change_account(session: Session, admin: SignedInUser, user_id: int, change: AccountChange) -> Account:
    """One transaction. A change of role or a disabling ends every session of the user at once, so nobody keeps a
    right they just lost: their next request gets invalid_token."""
    lock_as_administrator(session, admin, user_id)
    changes_rights = []
    if change.role is not None:
        changes_rights.append(User.role != change.role)
    if change.disabled:
        changes_rights.append(User.disabled.is_(False))
    if changes_rights:
        rights_change = exists().where(User.id == user_id, or_(*changes_rights))
        session.execute(delete(LoginSession).where(LoginSession.user_id == user_id, rights_change))
    session.execute(update(User).where(User.id == user_id).values(change.model_dump(exclude_none=True)))
    account = read_account(session, user_id)
    refuse_if_no_administrator_left(session)
    session.commit()
    return account


def delete_account(session: Session, admin: SignedInUser, user_id: int) -> str:
    """Its sessions go with it (a foreign key); the id is never handed out again. Returns the name it had."""
    lock_as_administrator(session, admin, user_id)
    username: str | None = session.scalar(delete(User).where(User.id == user_id).returning(User.username))
    if username is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, NO_SUCH_USER)
    refuse_if_no_administrator_left(session)
    session.commit()
    return username


def end_sessions(session: Session, admin: SignedInUser, user_id: int) -> str:
    """Returns the user's name."""
    lock_as_administrator(session, admin, user_id)
    username = session.scalar(select(User.username).where(User.id == user_id))
    if username is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, NO_SUCH_USER)
    session.execute(delete(LoginSession).where(LoginSession.user_id == user_id))
    session.commit()
    return username


def log_action(admin: SignedInUser, action: str, user_id: int, username: str) -> None:
    """Visible with the default settings: a warning, as uvicorn logs and Python prints without configuration."""
    logger.warning("Administrator %s (id %d) %s user %s (id %d)", admin.username, admin.id, action, username, user_id)


# users.id is an INTEGER, 32 bits on PostgreSQL, which refuses a larger number in a query: such an id is a 422.
LARGEST_ID = 2**31 - 1
UserId = Annotated[int, Path(ge=1, le=LARGEST_ID, description="The user's id")]


@router.get("/users")
async def list_users(
    admin: Administrator,
    limit: Annotated[int, Query(ge=1, le=100, description="How many users, at most")] = 50,
    after: Annotated[
        int, Query(ge=0, le=LARGEST_ID, description="Users whose id is greater than this: a page's next_after")
    ] = 0,
) -> AccountPage:
    """Every user, in order of id, a page at a time."""
    return await in_session(lambda session: read_page(session, after, limit))


@router.get("/users/{user_id}")
async def read_user(admin: Administrator, user_id: UserId) -> Account:
    return await in_session(lambda session: read_account(session, user_id))


@router.patch(
    "/users/{user_id}",
    responses={status.HTTP_409_CONFLICT: {"model": Detail, "description": LAST_ADMINISTRATOR}},
)
async def change_user(admin: Administrator, user_id: UserId, change: AccountChange) -> Account:
    """Change the role, disable or enable the account. A change of role, or disabling, ends all its sessions."""
    account = await in_session(lambda session: change_account(session, admin, user_id, change))
    changes = ", ".join(f"{name}={value}" for name, value in change.model_dump(exclude_none=True).items())
    log_action(admin, f"set {changes} on", user_id, account.username)
    return account


@router.delete(
    "/users/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={status.HTTP_409_CONFLICT: {"model": Detail, "description": LAST_ADMINISTRATOR}},
)
async def delete_user(admin: Administrator, user_id: UserId) -> None:
    """Delete the account and its sessions; the name is free again, and the id is never reused."""
    username = await in_session(lambda session: delete_account(session, admin, user_id))
    log_action(admin, "deleted", user_id, username)


@router.get("/users/{user_id}/sessions")
async def list_user_sessions(admin: Administrator, user_id: UserId) -> list[SessionInfo]:
    """Where the user is logged in, most recently used first: the list its owner sees, without `current`."""
    rows = await in_session(lambda session: live_sessions(session, user_id))
    return [SessionInfo.model_validate(row) for row in rows]


def live_sessions(session: Session, user_id: int) -> Sequence[SessionRow]:
    if session.scalar(select(User.id).where(User.id == user_id)) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, NO_SUCH_USER)
    return sessions.live_sessions_of(session, user_id)


@router.delete("/users/{user_id}/sessions", status_code=status.HTTP_204_NO_CONTENT)
async def end_user_sessions(admin: Administrator, user_id: UserId) -> None:
    """End every session of the user, on every device (ASVS 7.4.5); the account stays."""
    username = await in_session(lambda session: end_sessions(session, admin, user_id))
    log_action(admin, "ended every session of", user_id, username)
