"""roles, disabled accounts and session scopes

Revision ID: e8a41b7c3d92
Revises: c52a7e0b8f3d
Create Date: 2026-12-02 06:40:00.000000

"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import migrate

# revision identifiers, used by Alembic.
revision: str = "e8a41b7c3d92"
down_revision: str | Sequence[str] | None = "c52a7e0b8f3d"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("scopes", sa.String(length=64), nullable=True))

    # Every account made before is an enabled user; when it was made is not known.
    with migrate.batch_alter_users() as batch_op:
        batch_op.add_column(sa.Column("role", sa.String(length=16), server_default="user", nullable=False))
        batch_op.add_column(sa.Column("disabled", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column("created_at", sa.Double(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    # Releases before 1.2.0 have no roles: every account becomes an enabled user. Say so before it is done.
    users = sa.table("users", sa.column("role", sa.String), sa.column("disabled", sa.Boolean))
    administrators, disabled = (
        op.get_bind()
        .execute(
            sa.select(
                sa.func.count().filter(users.c.role != "user"), sa.func.count().filter(users.c.disabled.is_(True))
            )
        )
        .one()
    )
    logging.getLogger("alembic").warning(
        "Downgrading below %s drops every role and disabled flag: %d administrators become users "
        "and %d disabled accounts can log in again",
        revision,
        administrators,
        disabled,
    )
    with migrate.batch_alter_users() as batch_op:
        batch_op.drop_column("created_at")
        batch_op.drop_column("disabled")
        batch_op.drop_column("role")

    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_column("scopes")
