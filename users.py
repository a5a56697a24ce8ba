"""The signed-in user's own account: read it, change its password, delete it, list its sessions and end them."""

import time
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import ColumnElement, and_, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session

import sessions
from auth import (
    BAD_TOKEN_RESPONSE,
    BUSY_RESPONSE,
    SCOPE_RESPONSE,
    THROTTLED_RESPONSE,
    AccountOwner,
    Detail,
    Reader,
    SignedInUser,
    UserPublic,
    check_password,
    client_address,
    in_login_session,
    invalid_token,
)
from database import in_session, took_sqlite_write_lock
from models import LoginSession, User
from passwords import HAS_USERNAME, NewPassword, StoredPassword, contains_username, hash_password
from roles import ADMIN

WRONG_PASSWORD = "The password is not correct"  # noqa: S105 (a message, not a password)
NO_SUCH_SESSION = "No live session of yours has this id"
PASSWORD_ROUTE_RESPONSES: dict[int | str, dict[str, Any]] = {
    status.HTTP_403_FORBIDDEN: {
        "model": Detail,
        "description": f"{WRONG_PASSWORD}, or the token was not granted the scope `account`",
    },
    **BAD_TOKEN_RESPONSE,
    **THROTTLED_RESPONSE,
    **BUSY_RESPONSE,
}

router = APIRouter(prefix="/users", tags=["users"])


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: StoredPassword
    new_password: NewPassword


class PasswordConfirmation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: StoredPassword


class SessionInfo(BaseModel):
    """A login session, as its owner (or an administrator) sees it. Times are in UTC."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    started_at: datetime
    last_used_at: datetime | None = Field(description="The login or the last refresh; null for sessions before 1.2")
    ends_at: datetime
    client_address: str | None = Field(description="Where the login came from; null for sessions before 1.2")
    user_agent: str | None = Field(description="The login's User-Agent as sent, cut to 256 characters")


class OwnSession(SessionInfo):
    current: bool = Field(description="True for the session of the token that asks")


@router.get("/me", responses=BAD_TOKEN_RESPONSE | SCOPE_RESPONSE | BUSY_RESPONSE)
async def read_current_user(user: Reader) -> UserPublic:
    return user


async def confirm_password(request: Request, user: SignedInUser, password: str) -> str:
    """A stolen token is not enough: the password is asked again, and guesses are throttled as logins are.
    Returns the hash the password matched."""
    account = await check_password(client_address(request), user.username, password)
    if account is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, WRONG_PASSWORD)
    return account.hashed_password


def still_verified(user: SignedInUser, verified_hash: str) -> ColumnElement[bool]:
    """What a change that was allowed by a password check needs when it commits: the hash that the password matched
    is still the stored one, and the caller's session is still live."""
    live = exists().where(LoginSession.id == user.session_id)
    return and_(User.id == user.id, User.hashed_password == verified_hash, live)


def refuse_stale(session: Session, user: SignedInUser) -> HTTPException:
    """Nothing was written: a session that ended meanwhile gets 401, a password changed meanwhile 403."""
    session.rollback()
    if session.get(LoginSession, user.session_id) is None:
        return invalid_token()
    return HTTPException(status.HTTP_403_FORBIDDEN, WRONG_PASSWORD)


def save_password(session: Session, user: SignedInUser, verified_hash: str, hashed_password: str) -> None:
    """One transaction: the new hash, if what was verified still holds, and every other session of the user ended.

    Of two changes made with the same old password, the second finds the hash changed: it writes nothing. On
    PostgreSQL it waits for the first's row lock, then checks the row again as it now is.
    """
    changed = session.execute(
        update(User)
        .where(still_verified(user, verified_hash))
        .values(hashed_password=hashed_password)
        .returning(User.id)
    ).first()
    if changed is None:
        raise refuse_stale(session, user)
    sessions.end_others(session, user.id, user.session_id)
    session.commit()


@router.patch("/me/password", status_code=status.HTTP_204_NO_CONTENT, responses=PASSWORD_ROUTE_RESPONSES)
async def change_password(change: PasswordChange, user: AccountOwner, request: Request) -> None:
    """Every other session of the user ends, on every device; the session that made the change goes on."""
    if contains_username(change.new_password, user.username):
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body", "new_password"), "msg": f"Value error, {HAS_USERNAME}"}]
        )
    verified_hash = await confirm_password(request, user, change.current_password)
    hashed_password = await hash_password(change.new_password)
    await in_login_session(lambda session: save_password(session, user, verified_hash, hashed_password))


# Never zero enabled administrators: every change that could leave none (the admin API's, and an administrator
# deleting their own account) locks, writes, counts, and is refused with 409 if none is left.
LAST_ADMINISTRATOR = "This would leave no enabled administrator: make another one first"
ENABLED_ADMINISTRATOR = User.role == ADMIN, User.disabled.is_(False)


def lock_accounts(session: Session, *user_ids: int) -> None:
    """Lock the rows of every enabled administrator and of these users, in order of id, before any read or write.

    Such changes then go one at a time, so two administrators demoting or deleting each other or themselves at once
    cannot leave none; and a login of a changed user, which locks its row to start a session, waits for the change,
    then sees it. SQLite has no row locks: there the change takes the database's one write lock instead.
    """
    if took_sqlite_write_lock(session):
        return
    locked = or_(User.id.in_(user_ids), and_(*ENABLED_ADMINISTRATOR))
    session.execute(select(User.id).where(locked).order_by(User.id).with_for_update())


def refuse_if_no_administrator_left(session: Session) -> None:
    if not session.scalar(select(func.count()).where(*ENABLED_ADMINISTRATOR)):
        session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, LAST_ADMINISTRATOR)


def delete_user(session: Session, user: SignedInUser, verified_hash: str) -> None:
    """Its sessions go with it (a foreign key). Ids are never handed out again, so no old token opens a new account.
    The last enabled administrator cannot go: as in the admin API, the same lock and the same count."""
    lock_accounts(session, user.id)
    deleted = session.execute(
        delete(User).where(still_verified(user, verified_hash)).returning(User.role, User.disabled)
    ).first()
    if deleted is None:
        raise refuse_stale(session, user)
    if deleted.role == ADMIN and not deleted.disabled:
        refuse_if_no_administrator_left(session)
    session.commit()


@router.delete("/me", status_code=status.HTTP_204_NO_CONTENT, responses=PASSWORD_ROUTE_RESPONSES)
async def delete_account(confirmation: PasswordConfirmation, user: AccountOwner, request: Request) -> None:
    """Delete the account and all its sessions; the username is free again."""
    verified_hash = await confirm_password(request, user, confirmation.password)
    await in_login_session(lambda session: delete_user(session, user, verified_hash))


@router.get("/me/sessions", responses=BAD_TOKEN_RESPONSE | SCOPE_RESPONSE | BUSY_RESPONSE)
async def list_sessions(user: Reader) -> list[OwnSession]:
    """Where you are logged in: your live sessions, most recently used first."""
    rows = await in_session(lambda session: sessions.live_sessions_of(session, user.id))
    return [OwnSession(**row._asdict(), current=row.id == user.session_id) for row in rows]


def end_own_sessions(session: Session, user: SignedInUser, verified_hash: str, *which: ColumnElement[bool]) -> int:
    """End the user's live sessions that match, if what was verified still holds; return how many ended."""
    verified = select(User.id).where(still_verified(user, verified_hash)).exists()
    mine = LoginSession.user_id == user.id, LoginSession.ends_at > time.time()
    ended = session.execute(delete(LoginSession).where(*mine, *which, verified).returning(LoginSession.id)).all()
    if not ended and not session.scalar(select(verified)):
        raise refuse_stale(session, user)
    session.commit()
    return len(ended)


def end_one_session(session: Session, user: SignedInUser, verified_hash: str, session_id: str) -> None:
    """Someone else's session, an ended one and garbage all get the same 404, and end nothing."""
    if not sessions.SESSION_ID_SHAPE.fullmatch(session_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, NO_SUCH_SESSION)
    if not end_own_sessions(session, user, verified_hash, LoginSession.id == session_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, NO_SUCH_SESSION)


@router.delete(
    "/me/sessions/{session_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        status.HTTP_404_NOT_FOUND: {"model": Detail, "description": NO_SUCH_SESSION},
        **PASSWORD_ROUTE_RESPONSES,
    },
)
async def end_session(
    session_id: str, confirmation: PasswordConfirmation, user: AccountOwner, request: Request
) -> None:
    """End one of your sessions: its tokens stop working on their next request. The password is asked, so that a
    stolen token cannot end its owner's sessions and keep its own (ASVS 7.5.2). Your current session may end too."""
    verified_hash = await confirm_password(request, user, confirmation.password)
    await in_login_session(lambda session: end_one_session(session, user, verified_hash, session_id))


@router.delete("/me/sessions", status_code=status.HTTP_204_NO_CONTENT, responses=PASSWORD_ROUTE_RESPONSES)
async def end_other_sessions(confirmation: PasswordConfirmation, user: AccountOwner, request: Request) -> None:
    """Log out everywhere else: every session of yours but this one ends."""
    verified_hash = await confirm_password(request, user, confirmation.password)
    await in_login_session(
        lambda session: end_own_sessions(session, user, verified_hash, LoginSession.id != user.session_id)
    )
