"""Login sessions: one per password login, so that every token it hands out can be taken back.

A session ends REFRESH_TOKEN_EXPIRE_DAYS after its login, however often it is refreshed, or sooner: at logout,
at revocation, when its user changes the password or deletes the account, and when a spent refresh token comes
back. Ending a session deletes its row, and a token is accepted only while its session's row is there.

A refresh token is the session's id, a dot and 256 random bits. Only its SHA-256 is stored, so a copy of the
database holds no token that works. Each refresh swaps it for a new one (rotation), and the old one is spent.
"""

import hashlib
import secrets
import time

from sqlalchemy import Row, bindparam, delete, select, update
from sqlalchemy.orm import Session

from config import settings
from models import LoginSession, User

SECONDS_PER_DAY = 86_400

# Every refresh runs this UPDATE, built once. It matches only the current token of a session that has not run
# out, so of several requests with one token exactly one wins, on SQLite and PostgreSQL alike.
ROTATE = (
    update(LoginSession)
    .where(
        LoginSession.id == bindparam("session_id"),
        LoginSession.refresh_hash == bindparam("presented_hash"),
        LoginSession.ends_at > bindparam("now"),
    )
    .values(refresh_hash=bindparam("next_hash"))
    .returning(
        LoginSession.id,
        LoginSession.user_id,
        LoginSession.ends_at,
        select(User.username).where(User.id == LoginSession.user_id).scalar_subquery().label("username"),
    )
)


def hashed(refresh_token: str) -> str:
    return hashlib.sha256(refresh_token.encode()).hexdigest()


def new_refresh_token(session_id: str) -> str:
    return f"{session_id}.{secrets.token_urlsafe(32)}"


def session_id_of(refresh_token: str) -> str:
    return refresh_token.partition(".")[0]


def start(session: Session, user_id: int) -> tuple[LoginSession, str]:
    """Start a session; return it and its first refresh token. Sessions that have run out are deleted."""
    now = time.time()
    session.execute(delete(LoginSession).where(LoginSession.ends_at <= now))
    login = LoginSession(
        id=secrets.token_urlsafe(16),
        user_id=user_id,
        started_at=now,
        ends_at=now + settings.refresh_token_expire_days * SECONDS_PER_DAY,
    )
    refresh_token = new_refresh_token(login.id)
    login.refresh_hash = hashed(refresh_token)
    session.add(login)
    session.commit()
    return login, refresh_token


def rotate(session: Session, refresh_token: str) -> tuple[Row[tuple[str, int, float, str]], str] | None:
    """Swap the session's current refresh token for a new one; return the session, its user's name and the new
    token. Or end the session the token names and return None: any other token that names a session is a spent
    one come back (RFC 9700 §4.14.2), so someone holds a copy."""
    session_id = session_id_of(refresh_token)
    next_token = new_refresh_token(session_id)
    # One statement needs no transaction around it: autocommit spares PostgreSQL the round trips of BEGIN and COMMIT.
    connection = session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    renewed = connection.execute(
        ROTATE,
        {
            "session_id": session_id,
            "presented_hash": hashed(refresh_token),
            "now": time.time(),
            "next_hash": hashed(next_token),
        },
    ).first()
    if renewed is None:
        end(session, session_id)
        return None
    return renewed, next_token


def end(session: Session, session_id: str) -> None:
    session.execute(delete(LoginSession).where(LoginSession.id == session_id))
    session.commit()


def end_others(session: Session, user_id: int, session_id: str) -> None:
    """End every session of the user but this one. The caller commits, with the change that calls for it."""
    session.execute(delete(LoginSession).where(LoginSession.user_id == user_id, LoginSession.id != session_id))
