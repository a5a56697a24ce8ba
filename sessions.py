"""Login sessions: one per password login, so that every token it hands out can be taken back.

A session ends REFRESH_TOKEN_EXPIRE_DAYS after its login, however often it is refreshed, or sooner: at logout,
at revocation, when its user changes the password or deletes the account, and when a spent refresh token comes
back. Ending a session deletes its row, and a token is accepted only while its session's row is there.

A refresh token is the session's id, a dot and 256 random bits. Only its SHA-256 is stored, so a copy of the
database holds no token that works. Each refresh swaps it for a new one (rotation), and the old one is spent:
its hash is kept while the session lives, so that its return can be told from a string that only names the session.
"""

import hashlib
import re
import secrets
import time
from collections.abc import Sequence

from sqlalchemy import Row, bindparam, delete, exists, func, insert, literal, select, update
from sqlalchemy.orm import Session

from config import settings
from models import LoginSession, SpentRefreshToken, User
from roles import session_scopes

SECONDS_PER_DAY = 86_400

# Every refresh runs this UPDATE, built once. It matches only the current token of a session that has not run
# out, of an account that exists and is enabled (whatever changed it: a database edit too), so of several requests
# with one token exactly one wins, on SQLite and PostgreSQL alike.
ROTATE = (
    update(LoginSession)
    .where(
        LoginSession.id == bindparam("session_id"),
        LoginSession.refresh_hash == bindparam("presented_hash"),
        LoginSession.ends_at > bindparam("now"),
        exists().where(User.id == LoginSession.user_id, User.disabled.is_(False)),
    )
    .values(refresh_hash=bindparam("next_hash"), last_used_at=bindparam("now"))
    .returning(
        LoginSession.id,
        LoginSession.user_id,
        LoginSession.ends_at,
        LoginSession.scopes,
        select(User.username).where(User.id == LoginSession.user_id).scalar_subquery().label("username"),
        select(User.role).where(User.id == LoginSession.user_id).scalar_subquery().label("role"),
    )
)


SPEND = insert(SpentRefreshToken).values(
    refresh_hash=bindparam("presented_hash"), session_id=bindparam("session_id"), spent_at=bindparam("now")
)
# What a session keeps of its spent tokens: the latest few, whatever the number of refreshes. A copy stolen that long
# ago is unknown: it gets invalid_grant like a made-up string, and ends nothing (and opens nothing).
SPENT_TOKENS_KEPT = 16
SPENT_IN_SESSION = SpentRefreshToken.session_id == bindparam("session_id")
FORGET_OLDEST_SPENT = delete(SpentRefreshToken).where(
    SPENT_IN_SESSION,
    SpentRefreshToken.refresh_hash.not_in(
        select(SpentRefreshToken.refresh_hash)
        .where(SPENT_IN_SESSION)
        .order_by(SpentRefreshToken.spent_at.desc().nulls_last())
        .limit(SPENT_TOKENS_KEPT)
    ),
)

# secrets.token_urlsafe(16) and (32): a string of any other shape is no id or token of ours, and reaches no query.
SESSION_ID_SHAPE = re.compile(r"[A-Za-z0-9_-]{22}")
REFRESH_TOKEN_SHAPE = re.compile(rf"({SESSION_ID_SHAPE.pattern})\.[A-Za-z0-9_-]{{43}}")


def hashed(refresh_token: str) -> str:
    return hashlib.sha256(refresh_token.encode()).hexdigest()


def new_refresh_token(session_id: str) -> str:
    return f"{session_id}.{secrets.token_urlsafe(32)}"


def session_id_of(refresh_token: str) -> str | None:
    """The session a refresh token names, or None if the string does not have a refresh token's shape."""
    shape = REFRESH_TOKEN_SHAPE.fullmatch(refresh_token)
    return shape[1] if shape else None


def start(
    session: Session, user: User, scopes: str, client_address: str, user_agent: str | None
) -> tuple[str, float, str] | None:
    """Start a session for a user whose password matched user.hashed_password; return its id, its end and its first
    refresh token. Sessions that have run out are deleted, and past MAX_SESSIONS_PER_USER the user's least recently
    used ones end.

    It starts only if what was checked still holds, in the same statement: the same stored hash, the same role, and
    the account enabled. A password changed, an account deleted, demoted or disabled while the password was being
    checked starts nothing (None). On PostgreSQL the statement locks the user's row (FOR UPDATE): a change that has
    not committed yet is waited for, then seen, and logins of one user count their sessions one at a time.
    """
    now = time.time()
    session.execute(delete(LoginSession).where(LoginSession.ends_at <= now))
    session_id = secrets.token_urlsafe(16)
    ends_at = now + settings.refresh_token_expire_days * SECONDS_PER_DAY
    refresh_token = new_refresh_token(session_id)
    values = {
        "id": session_id,
        "started_at": now,
        "last_used_at": now,
        "ends_at": ends_at,
        "refresh_hash": hashed(refresh_token),
        "scopes": scopes,
        "client_address": client_address or None,
        "user_agent": user_agent,
    }
    still_holds = User.id == user.id, User.hashed_password == user.hashed_password, User.role == user.role
    if_still_verified = (
        select(User.id, *(literal(value, LoginSession.__table__.c[name].type) for name, value in values.items()))
        .where(*still_holds, User.disabled.is_(False))
        .with_for_update()
    )
    started = session.execute(
        insert(LoginSession).from_select(["user_id", *values], if_still_verified).returning(LoginSession.id)
    ).first()
    if started is not None:
        end_least_recently_used(session, user.id)
    session.commit()
    return (session_id, ends_at, refresh_token) if started else None


LAST_USED = func.coalesce(LoginSession.last_used_at, LoginSession.started_at)


def end_least_recently_used(session: Session, user_id: int) -> None:
    """Keep the user's MAX_SESSIONS_PER_USER most recently used sessions, and end the others."""
    kept = (
        select(LoginSession.id)
        .where(LoginSession.user_id == user_id)
        .order_by(LAST_USED.desc(), LoginSession.id)
        .limit(settings.max_sessions_per_user)
    )
    session.execute(delete(LoginSession).where(LoginSession.user_id == user_id, LoginSession.id.not_in(kept)))


SessionRow = Row[str, float, float | None, float, str | None, str | None]


def live_sessions_of(session: Session, user_id: int) -> Sequence[SessionRow]:
    """The user's sessions that have not run out, most recently used first: one query on the index of user_id."""
    columns = (
        LoginSession.id,
        LoginSession.started_at,
        LoginSession.last_used_at,
        LoginSession.ends_at,
        LoginSession.client_address,
        LoginSession.user_agent,
    )
    live = LoginSession.user_id == user_id, LoginSession.ends_at > time.time()
    return session.execute(select(*columns).where(*live).order_by(LAST_USED.desc(), LoginSession.id)).all()


def scopes_of(session: Session, refresh_token: str) -> str | None:
    """The scopes of the session whose current refresh token this is; None if it is no current refresh token."""
    session_id = session_id_of(refresh_token)
    if session_id is None:
        return None
    current = LoginSession.id == session_id, LoginSession.refresh_hash == hashed(refresh_token)
    found = session.execute(select(LoginSession.scopes, User.role).join(User).where(*current)).first()
    return session_scopes(found.scopes, found.role) if found else None


def rotate(
    session: Session, refresh_token: str
) -> tuple[Row[tuple[str, int, float, str | None, str, str]], str] | None:
    """Swap the session's current refresh token for a new one; return the session, its user's name and the new
    token. Or return None, and if the token is a spent one of the session come back, end the session: someone
    holds a copy (RFC 9700 §4.14.2). Anything else, such as the session's id with a made-up secret, ends nothing.

    The new token and the spent one are written in one transaction. A second request with the same token waits
    for it (ROTATE locks the session's row), then finds the token spent.
    """
    session_id = session_id_of(refresh_token)
    if session_id is None:
        return None
    presented_hash = hashed(refresh_token)
    next_token = new_refresh_token(session_id)
    connection = session.connection()
    now = time.time()
    params = {"session_id": session_id, "presented_hash": presented_hash, "now": now, "next_hash": hashed(next_token)}
    renewed = connection.execute(ROTATE, params).first()
    if renewed is None:
        spent = exists().where(SpentRefreshToken.refresh_hash == presented_hash)
        connection.execute(delete(LoginSession).where(LoginSession.id == session_id, spent))
    else:
        connection.execute(SPEND, params)
        connection.execute(FORGET_OLDEST_SPENT, params)
    session.commit()
    return (renewed, next_token) if renewed else None


def end(session: Session, session_id: str) -> None:
    session.execute(delete(LoginSession).where(LoginSession.id == session_id))
    session.commit()


def end_by_refresh_token(session: Session, refresh_token: str) -> None:
    """End the session whose current refresh token this is (revocation); a spent or made-up one ends nothing."""
    session_id = session_id_of(refresh_token)
    current = LoginSession.refresh_hash == hashed(refresh_token)
    session.execute(delete(LoginSession).where(LoginSession.id == session_id, current))
    session.commit()


def end_others(session: Session, user_id: int, session_id: str) -> None:
    """End every session of the user but this one. The caller commits, with the change that calls for it."""
    session.execute(delete(LoginSession).where(LoginSession.user_id == user_id, LoginSession.id != session_id))
