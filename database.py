"""The database: one engine for the app, and a short session for each piece of work, off the event loop."""

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from anyio import CapacityLimiter, to_thread
from sqlalchemy import URL, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import StaticPool

from config import settings


def parse_database_url(raw_url: str) -> URL:
    """Read DATABASE_URL, accepting the postgres:// forms that hosting providers hand out."""
    try:
        url = make_url(raw_url)
    except (ArgumentError, ValueError):
        raise SystemExit(
            "DATABASE_URL is not a database URL: use e.g. sqlite:///./auth.db or postgresql://user:password@host/dbname"
        ) from None
    if url.drivername in ("postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def configure_sqlite(dbapi_connection: Any, connection_record: Any) -> None:
    """WAL lets readers go on while one connection writes; SQLite checks foreign keys only when told, per connection."""
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    dbapi_connection.execute("PRAGMA foreign_keys=ON")


def make_engine(url: URL) -> Engine:
    """Give up on a connection, a lock or a free pooled connection after a few seconds, so a client gets a 503.

    SQLite has one writer lock: it waits for it up to the timeout, and WAL lets readers go on meanwhile.
    An SQLite database in memory lives as long as its one connection, which every thread shares.
    """
    timeout = settings.database_timeout_seconds
    is_sqlite = url.get_backend_name() == "sqlite"
    options: dict[str, Any]
    if is_sqlite and url.database in (None, "", ":memory:"):
        options = {"connect_args": {"check_same_thread": False}, "poolclass": StaticPool}
    elif is_sqlite:
        options = {"connect_args": {"check_same_thread": False, "timeout": timeout}, "pool_timeout": timeout}
    else:
        options = {"connect_args": {"connect_timeout": timeout}, "pool_timeout": timeout, "pool_pre_ping": True}
    try:
        engine = create_engine(url, **options)
    except NoSuchModuleError:
        raise SystemExit(
            f"DATABASE_URL: SQLAlchemy knows no database called {url.drivername!r}; "
            "use sqlite:///... or postgresql://..."
        ) from None
    except ImportError as error:
        raise SystemExit(
            f"DATABASE_URL: the driver for {url.drivername!r} is not installed ({error.name}); "
            'for PostgreSQL run: pip install -e ".[postgres]"'
        ) from None
    if is_sqlite:
        event.listen(engine, "connect", configure_sqlite)
    return engine


engine = make_engine(parse_database_url(settings.database_url))
SessionLocal = sessionmaker(engine, expire_on_commit=False)


class Base(DeclarativeBase):
    pass


T = TypeVar("T")


async def in_session(work: Callable[[Session], T], limiter: CapacityLimiter | None = None) -> T:
    """Run database work in a worker thread, with a session that is closed (and so rolled back) as soon as it ends.

    A request holds a pooled connection and a thread only while it talks to the database, never while it hashes.
    """

    def run() -> T:
        with SessionLocal() as session:
            return work(session)

    return await to_thread.run_sync(run, limiter=limiter)


def took_sqlite_write_lock(session: Session) -> bool:
    """On SQLite, take the database's one write lock now, as the session's first statement (BEGIN IMMEDIATE), so that
    what the session reads next is still what is there when it commits. False elsewhere: PostgreSQL locks rows, or
    an advisory lock, instead."""
    if session.get_bind().dialect.name != "sqlite":
        return False
    session.execute(text("BEGIN IMMEDIATE"))
    return True


UNAVAILABLE_SQLSTATES = ("08", "53300", "57P01", "57P02", "57P03")


def sqlite_is_busy(error: sqlite3.Error) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED, with any extended code (SQLITE_BUSY_RECOVERY while another process recovers
    the write-ahead log after a crash, SQLITE_BUSY_SNAPSHOT, ...): an extended code keeps its primary in its low byte.
    """
    return getattr(error, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def is_unavailable(error: Exception) -> bool:
    """Tell "the database is down, restarting or busy: try again" from a defect such as a missing table.

    It is unavailable when no pooled connection came free in time, when SQLAlchemy saw the connection drop,
    when SQLite's lock stayed busy, or when PostgreSQL's answer is a connection error (SQLSTATE class 08,
    too many connections, shutting down or starting up); psycopg gives no SQLSTATE when it could not connect.
    """
    if isinstance(error, PoolTimeoutError):
        return True
    if not isinstance(error, DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    if isinstance(error.orig, sqlite3.Error):
        return sqlite_is_busy(error.orig)
    sqlstate = getattr(error.orig, "sqlstate", None)
    if sqlstate is None:
        return isinstance(error, OperationalError)
    return str(sqlstate).startswith(UNAVAILABLE_SQLSTATES)
