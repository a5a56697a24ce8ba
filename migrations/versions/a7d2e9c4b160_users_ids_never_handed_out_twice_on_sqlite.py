"""users' ids never handed out twice on SQLite

Revision ID: a7d2e9c4b160
Revises: f3b5c0d9e6a4
Create Date: 2026-12-06 10:30:00.000000

"""

from collections.abc import Sequence

from alembic import op

import migrate

# revision identifiers, used by Alembic.
revision: str = "a7d2e9c4b160"
down_revision: str | Sequence[str] | None = "f3b5c0d9e6a4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    # 1.2.0's revision e8a41b7c3d92 copied users without AUTOINCREMENT on SQLite: copy it again, with it, and with
    # the sequence past every id still known. PostgreSQL's sequence never lost anything.
    if op.get_bind().dialect.name == "sqlite":
        with migrate.batch_alter_users(recreate="always"):
            pass


def downgrade() -> None:
    """Downgrade schema."""
    # Nothing to undo: every earlier revision wants AUTOINCREMENT too.
