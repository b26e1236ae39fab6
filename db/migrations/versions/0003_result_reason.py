"""the scope gate's coded reason of a not-assessed result

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("reason", sa.String(length=32), nullable=True))
        batch.create_index(batch.f("ix_results_reason"), ["reason"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("results") as batch:
        batch.drop_index(batch.f("ix_results_reason"))
        batch.drop_column("reason")
