"""signing keys

Revision ID: c1f0d2e3a4b5
Revises: b9e4f1a2c3d5
Create Date: 2026-12-06 11:20:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "c1f0d2e3a4b5"
down_revision: str | Sequence[str] | None = "b9e4f1a2c3d5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    # The app makes the first keys as it starts (keys.py). HS256 tokens of 1.2.0 are refused from then on; their
    # refresh tokens refresh into tokens signed with these keys.
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("algorithm", sa.String(length=8), nullable=False),
        sa.Column("state", sa.String(length=8), nullable=False),
        sa.Column("since", sa.Double(), nullable=False),
        sa.Column("public_jwk", sa.String(length=2048), nullable=False),
        sa.Column("encrypted_private_key", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("kid"),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("signing_keys")
