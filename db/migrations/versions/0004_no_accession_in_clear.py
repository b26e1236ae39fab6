"""accession numbers only in the pseudonym map, not in the clear in studies

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema: the clear-text column goes, with what it held."""
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("accession_number")


def downgrade() -> None:
    """Downgrade schema (the values are not restored)."""
    with op.batch_alter_table("studies") as batch:
        batch.add_column(
            sa.Column("accession_number", sa.String(length=16), nullable=False, server_default="")
        )
