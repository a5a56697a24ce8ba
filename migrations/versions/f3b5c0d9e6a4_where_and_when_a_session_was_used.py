"""where and when a session was used

Revision ID: f3b5c0d9e6a4
Revises: e8a41b7c3d92
Create Date: 2026-12-02 06:50:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "f3b5c0d9e6a4"
down_revision: str | Sequence[str] | None = "e8a41b7c3d92"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    # Sessions from before show null: nothing was recorded.
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_used_at", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("client_address", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("user_agent", sa.String(length=256), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_column("user_agent")
        batch_op.drop_column("client_address")
        batch_op.drop_column("last_used_at")
