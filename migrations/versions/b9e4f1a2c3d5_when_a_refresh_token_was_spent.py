"""when a refresh token was spent

Revision ID: b9e4f1a2c3d5
Revises: a7d2e9c4b160
Create Date: 2026-12-06 10:40:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "b9e4f1a2c3d5"
down_revision: str | Sequence[str] | None = "a7d2e9c4b160"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    # Tokens spent before show null, and are the first to be forgotten.
    with op.batch_alter_table("spent_refresh_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("spent_at", sa.Double(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("spent_refresh_tokens", schema=None) as batch_op:
        batch_op.drop_column("spent_at")
