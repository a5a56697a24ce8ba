"""Slow down password guessing: failed logins counted per client address and username, in the database.

The counts live in the database, so every worker and host shares them and a restart forgets nothing.
"""

import math
import time

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.orm import Session

from config import settings
from models import LoginFailure

ADDRESS_CAP_FACTOR = 20


def nth_latest_failure(session: Session, limit: int, *conditions: ColumnElement[bool]) -> float | None:
    """When the limit-th latest failure in the window happened, or None if there are fewer than limit."""
    window_start = time.time() - settings.login_window_seconds
    return session.scalar(
        select(LoginFailure.failed_at)
        .where(LoginFailure.failed_at > window_start, *conditions)
        .order_by(LoginFailure.failed_at.desc())
        .offset(limit - 1)
        .limit(1)
    )


def seconds_to_wait(session: Session, client_address: str, username: str) -> int | None:
    """Whole seconds until this address may try this username again, or None if it may try now.

    The limit-th latest failure is the one whose leaving the window brings the count under the limit.
    """
    limit = settings.login_max_failures
    if not limit:
        return None
    same_address = LoginFailure.client_address == client_address
    blocking = [
        nth_latest_failure(session, limit, same_address, LoginFailure.username == username),
        nth_latest_failure(session, ADDRESS_CAP_FACTOR * limit, same_address),
    ]
    last_block_ends = max((failed_at for failed_at in blocking if failed_at is not None), default=None)
    if last_block_ends is None:
        return None
    return max(1, math.ceil(last_block_ends + settings.login_window_seconds - time.time()))


def record_failure(session: Session, client_address: str, username: str) -> None:
    """Count one failure, and forget those that no longer count, so the table stays small."""
    if not settings.login_max_failures:
        return
    now = time.time()
    session.execute(delete(LoginFailure).where(LoginFailure.failed_at <= now - settings.login_window_seconds))
    session.add(LoginFailure(client_address=client_address, username=username, failed_at=now))
    session.commit()


def clear_failures(session: Session, client_address: str, username: str) -> None:
    if not settings.login_max_failures:
        return
    session.execute(
        delete(LoginFailure).where(LoginFailure.client_address == client_address, LoginFailure.username == username)
    )
    session.commit()
