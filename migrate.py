"""Bring the database to the newest schema before the app serves: Alembic's upgrade, one process at a time.

Every worker runs this as it starts. The first to take the lock upgrades; the others wait for it, then find
nothing to do. A database made by release 1.0.0 or 1.1.0, before this project used Alembic, is recognized by
its tables and marked (stamped) at its release's revision first, so only what came later runs on it.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from alembic import command, op
from alembic.config import Config
from alembic.operations import BatchOperations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, func, inspect, select
from sqlalchemy.exc import OperationalError

from config import settings

logger = logging.getLogger(__name__)

# The revisions, beside this module in the project folder and in an install alike (pyproject.toml ships them).
MIGRATIONS = Path(__file__).with_name("migrations")
RELEASE_1_0_0 = "4b1e1c6a9d01"
RELEASE_1_1_0 = "9c0d3f5e2a17"
# PostgreSQL's advisory locks are named by a number: any that no other program on the database uses.
MIGRATION_LOCK = 6_020_241_126
# How long a starting worker waits for another one's upgrade on SQLite, in milliseconds.
SQLITE_MIGRATION_WAIT_MS = 10 * 60 * 1000


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's settings, made here rather than read from alembic.ini, which only the `alembic` command in the
    project folder reads; and the connection to migrate on, if the caller holds the lock."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@contextmanager
def migration_lock(engine: Engine) -> Iterator[Connection]:
    """A transaction that one process at a time may hold; the others wait for it.

    PostgreSQL: an advisory lock that ends with the transaction. SQLite: the write lock, taken at BEGIN IMMEDIATE,
    with foreign keys off while it is held, since Alembic copies a table to alter it and dropping the old copy
    would otherwise delete the rows that refer to it (every session, with its user).
    """
    with engine.connect() as connection:
        sqlite = engine.dialect.name == "sqlite"
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")  # outside a transaction, or SQLite ignores it
            connection.exec_driver_sql(f"PRAGMA busy_timeout={SQLITE_MIGRATION_WAIT_MS}")
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:  # PostgreSQL, the other database this project runs on
            connection.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK)))
        yield connection
        connection.commit()
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.exec_driver_sql(f"PRAGMA busy_timeout={settings.database_timeout_seconds * 1000}")


@contextmanager
def batch_alter_users(recreate: Literal["auto", "always"] = "auto") -> Iterator[BatchOperations]:
    """Alembic's batch_alter_table for users, for every revision that alters it.

    On SQLite, batch mode may copy the table, and a plain copy has no AUTOINCREMENT: SQLite would then hand the id
    of a deleted user to the next one, and a token of the old account would open the new one. So the copy keeps
    AUTOINCREMENT, and its sequence goes on from where it was, not from the highest id the copy holds.
    """
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    last_id = bind.exec_driver_sql(LAST_USER_ID).scalar() if sqlite else None
    with op.batch_alter_table("users", recreate=recreate, table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        yield batch_op
    if sqlite:
        set_user_id_sequence(max(last_id or 0, bind.exec_driver_sql(LAST_USER_ID).scalar() or 0))


# The highest user id SQLite has handed out, or that anything still names: a user deleted by hand (the sqlite3
# shell leaves foreign keys off) leaves sessions that name it.
LAST_USER_ID = """SELECT max(
    (SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'users'),
    (SELECT coalesce(max(id), 0) FROM users),
    (SELECT coalesce(max(user_id), 0) FROM sessions)
)"""


def set_user_id_sequence(last_id: int) -> None:
    """On SQLite: the next user gets an id after last_id."""
    bind = op.get_bind()
    bind.exec_driver_sql("DELETE FROM sqlite_sequence WHERE name = 'users'")
    bind.exec_driver_sql("INSERT INTO sqlite_sequence (name, seq) VALUES ('users', ?)", (last_id,))


def release_before_alembic(connection: Connection) -> str | None:
    """The revision of a database made by 1.0.0 or 1.1.0, known by its tables; None for an empty one."""
    tables = set(inspect(connection).get_table_names())
    if not {"users", "login_failures"} <= tables:
        return None
    return RELEASE_1_1_0 if "sessions" in tables else RELEASE_1_0_0


def upgrade(engine: Engine) -> None:
    """Bring the database to the newest revision. A database newer than this code stops it: it never downgrades."""
    config = alembic_config()
    scripts = ScriptDirectory.from_config(config)
    head = scripts.get_current_head()
    known = {revision.revision for revision in scripts.walk_revisions()}
    with migration_lock(engine) as connection:
        config.attributes["connection"] = connection
        current = MigrationContext.configure(connection).get_current_revision()
        if current is None and (current := release_before_alembic(connection)):
            command.stamp(config, current)
        if current == head:
            return
        if current is not None and current not in known:
            raise SystemExit(
                f"The database is at revision {current}, which this code does not know: a newer release upgraded it; "
                "run that release, or downgrade the database with it (alembic downgrade) first"
            )
        logger.warning("Upgrading the database from revision %s to %s", current or "none (empty)", head)
        command.upgrade(config, "head")


def upgrade_or_exit(engine: Engine) -> None:
    """Stop start-up with one line when the database cannot be opened."""
    try:
        upgrade(engine)
    except OperationalError as error:
        raise SystemExit(f"Cannot open the database in DATABASE_URL: {error.orig}") from None
