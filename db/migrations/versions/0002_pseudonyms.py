"""pseudonym map of de-identified jobs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "pseudonyms",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_fk", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "uid",
                "patient_id",
                "accession_number",
                "date_offset",
                name="pseudonymkind",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("original", sa.String(length=128), nullable=False),
        sa.Column("pseudonym", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_fk"],
            ["jobs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_fk", "kind", "original", name="uq_pseudonyms_job_kind_original"),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("pseudonyms")
