"""Alembic's environment: the database in DATABASE_URL (config.py) and the tables in models.py."""

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

import database
import migrate
import models  # noqa: F401 (defines the tables in database.Base.metadata)

config = context.config


def run_migrations(connection: Connection) -> None:
    # Batch operations: SQLite alters a table by copying it, which Alembic does for us when told.
    context.configure(connection=connection, target_metadata=database.Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if config.attributes.get("connection") is not None:  # the app, at start-up: it already holds the lock
    run_migrations(config.attributes["connection"])
else:  # the alembic command: the same lock as the app's, so that it never migrates beside a starting worker
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)
    with migrate.migration_lock(database.engine) as connection:
        run_migrations(connection)
