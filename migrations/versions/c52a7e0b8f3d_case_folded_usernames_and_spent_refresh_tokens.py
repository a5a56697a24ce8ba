"""case-folded usernames and spent refresh tokens

Revision ID: c52a7e0b8f3d
Revises: 9c0d3f5e2a17
Create Date: 2026-12-02 06:30:00.000000

"""

import unicodedata
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import migrate

# revision identifiers, used by Alembic.
revision: str = "c52a7e0b8f3d"
down_revision: str | Sequence[str] | None = "9c0d3f5e2a17"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

users = sa.table(
    "users", sa.column("id", sa.Integer), sa.column("username", sa.String), sa.column("username_key", sa.String)
)


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "spent_refresh_tokens",
        sa.Column("refresh_hash", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("refresh_hash"),
    )
    with op.batch_alter_table("spent_refresh_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_spent_refresh_tokens_session_id"), ["session_id"], unique=False)

    with migrate.batch_alter_users() as batch_op:
        batch_op.add_column(sa.Column("username_key", sa.String(length=255), nullable=True))

    # Every name gets its key, NFKC and case-folded as the app folds it; of names that differ only by case, the
    # oldest keeps the key, and the others keep their account with none.
    keys: dict[str, int] = {}
    for user_id, username in op.get_bind().execute(sa.select(users.c.id, users.c.username).order_by(users.c.id)):
        keys.setdefault(unicodedata.normalize("NFKC", username).casefold(), user_id)
    if keys:
        op.get_bind().execute(
            users.update().where(users.c.id == sa.bindparam("user_id")).values(username_key=sa.bindparam("key")),
            [{"user_id": user_id, "key": key} for key, user_id in keys.items()],
        )

    with migrate.batch_alter_users() as batch_op:
        batch_op.create_index(batch_op.f("ix_users_username_key"), ["username_key"], unique=True)


def downgrade() -> None:
    """Downgrade schema."""
    with migrate.batch_alter_users() as batch_op:
        batch_op.drop_index(batch_op.f("ix_users_username_key"))
        batch_op.drop_column("username_key")

    with op.batch_alter_table("spent_refresh_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_spent_refresh_tokens_session_id"))

    op.drop_table("spent_refresh_tokens")
