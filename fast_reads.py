"""The read of every protected request (and of the health check), without a trip to a worker thread.

A worker thread costs a hand-off each way and an SQLAlchemy connection on top of the query, which on this
path is most of the work. So SQLite is read on the event loop itself, when it can answer at once, and
PostgreSQL through psycopg's async connections: the loop sends the query and serves other requests until
the answer comes. Any other database, and SQLite when it cannot answer at once, is read on a worker thread.
"""

import functools
import logging
import sqlite3
from typing import TYPE_CHECKING, Any, TypeVarTuple, cast

from anyio import to_thread
from sqlalchemy import Dialect, Engine, Select
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError

import database
from config import settings

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

logger = logging.getLogger(__name__)
Columns = TypeVarTuple("Columns")
SQLITE_NAMED_PARAMETERS = sqlite.dialect(paramstyle="named")
POSTGRES_CONNECTIONS = 5  # for these reads, in each process, besides the engine's pool
# psycopg's pool waits longer between attempts to reconnect the longer the database is away (1, 2, 4 … 64 s after
# two minutes). Here each attempt gives up after this long instead, and a read that finds no connection starts a
# new one at once: reads come back within about a second of the database, however long it was away.
RECONNECT_SECONDS = 1.0

sqlite_readers: dict[str, sqlite3.Connection] = {}
postgres_pools: dict[Engine, "AsyncConnectionPool[AsyncConnection[Any]]"] = {}


async def read_row(statement: Select[*Columns], **params: Any) -> tuple[*Columns] | None:
    """Read one row: on the event loop where that cannot wait, or awaited without blocking it.

    An SQLite read in WAL mode never waits for the writer. The locks a reader would wait for (recovery after
    a crash, a truncating checkpoint, a connection in exclusive locking mode) make this read, which has no
    busy timeout, fail at once with SQLITE_BUSY; it then goes to a worker thread, which may wait.
    """
    engine = database.engine
    if engine.dialect.name == "postgresql" and psycopg_pool_installed():
        return await read_from_postgres(statement, params)
    reader = sqlite_reader(engine.url.database) if engine.dialect.name == "sqlite" else None
    if reader is not None:
        sql, defaults = compiled(statement, SQLITE_NAMED_PARAMETERS)
        try:
            rows = reader.execute(sql, defaults | params).fetchall()  # all of them, so the read ends here
        except sqlite3.OperationalError as error:
            if not database.sqlite_is_busy(error):
                raise
        else:
            return rows[0] if rows else None
    return await to_thread.run_sync(read_in_thread, statement, params)


def read_in_thread(statement: Select[*Columns], params: dict[str, Any]) -> tuple[*Columns] | None:
    """A plain connection, not an ORM session: a quarter of the time."""
    with database.engine.connect() as connection:
        row = connection.execute(statement, params).first()  # a Row unpacks as a tuple does
        return cast(tuple[*Columns] | None, row)


def sqlite_reader(path: str | None) -> sqlite3.Connection | None:
    """The connection for reads on the event loop, one per SQLite file: read-only, no busy timeout, autocommit."""
    if not path or path == ":memory:":
        return None
    if path not in sqlite_readers:
        sqlite_readers[path] = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
        sqlite_readers[path].execute("PRAGMA query_only=ON")
    return sqlite_readers[path]


async def read_from_postgres(statement: Select[*Columns], params: dict[str, Any]) -> tuple[*Columns] | None:
    """Errors come back as SQLAlchemy's, so that "away or busy" is a 503 here as everywhere."""
    import psycopg  # the postgres extra

    sql, defaults = compiled(statement, database.engine.dialect)
    try:
        async with (await postgres_pool()).connection() as connection:
            row = await (await connection.execute(sql, defaults | params)).fetchone()
    except psycopg.Error as error:
        raise DBAPIError.instance(sql, params, error, psycopg.Error) from error
    return cast(tuple[*Columns] | None, row)


async def postgres_pool() -> "AsyncConnectionPool[AsyncConnection[Any]]":
    """psycopg's pool of async connections to the engine's database, checked before each use like the engine's."""
    from psycopg_pool import AsyncConnectionPool  # the postgres extra

    pool = postgres_pools.get(database.engine)
    if pool is None:
        timeout = settings.database_timeout_seconds
        pool = postgres_pools[database.engine] = AsyncConnectionPool(
            database.engine.url.set(drivername="postgresql").render_as_string(hide_password=False),
            min_size=1,
            max_size=POSTGRES_CONNECTIONS,
            timeout=timeout,
            reconnect_timeout=RECONNECT_SECONDS,
            kwargs={"autocommit": True, "connect_timeout": timeout},
            check=AsyncConnectionPool.check_connection,
            open=False,
        )
    if pool.closed:
        await pool.open()  # it then connects in the background; reads that come meanwhile wait here, then go on
    return pool


@functools.cache
def psycopg_pool_installed() -> bool:
    """psycopg installed by hand, without the postgres extra, has no pool: PostgreSQL is then read on a thread."""
    try:
        import psycopg_pool  # noqa: F401 (only whether it is there)
    except ImportError:
        logger.warning(
            "psycopg_pool is not installed: protected requests read PostgreSQL on worker threads, more slowly; "
            'install it with: pip install -e ".[postgres]"'
        )
        return False
    return True


@functools.cache
def compiled(statement: Select[Any], dialect: Dialect) -> tuple[str, dict[str, Any]]:
    """SQLAlchemy writes the SQL once, for the driver itself, with its parameters' defaults."""
    sql = statement.compile(dialect=dialect)
    return str(sql), sql.params


async def close() -> None:
    """Close every connection these reads hold, as the app stops (a pool belongs to one event loop)."""
    for reader in sqlite_readers.values():
        reader.close()
    sqlite_readers.clear()
    for pool in postgres_pools.values():
        await pool.close()
    postgres_pools.clear()
