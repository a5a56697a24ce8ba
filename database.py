"""The database: one engine for the app, one session per request."""

import os
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, NoSuchModuleError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker


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


def use_write_ahead_log(dbapi_connection, connection_record) -> None:
    dbapi_connection.execute("PRAGMA journal_mode=WAL")


def make_engine(url: URL) -> Engine:
    is_sqlite = url.get_backend_name() == "sqlite"
    # Several requests write at once: SQLite has one writer lock, so wait up to
    # 30 s for it instead of failing with "database is locked", and use WAL so
    # that readers never wait for the writer.
    if is_sqlite:
        options = {"connect_args": {"check_same_thread": False, "timeout": 30}}
    else:
        options = {"pool_pre_ping": True}
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
        event.listen(engine, "connect", use_write_ahead_log)
    return engine


engine = make_engine(parse_database_url(os.getenv("DATABASE_URL", "sqlite:///./auth.db")))
SessionLocal = sessionmaker(engine)


class Base(DeclarativeBase):
    pass


def create_tables() -> None:
    """Create missing tables. Workers starting together may race to do it: the losers look again."""
    try:
        Base.metadata.create_all(engine)
    except DatabaseError:
        Base.metadata.create_all(engine)


def get_db() -> Iterator[Session]:
    """One session per request, closed (and so rolled back) however the request ends."""
    with SessionLocal() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]
