"""bundles: the installed model bundles and their roles, shadow results, a result's bundle hash

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "bundles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column(
            "role",
            sa.Enum("live", "shadow", "off", name="bundlerole", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("installed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", "version", name="uq_bundles_name_version"),
    )
    with op.batch_alter_table("bundles") as batch:
        batch.create_index(batch.f("ix_bundles_role"), ["role"], unique=False)

    op.create_table(
        "shadow_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_fk", sa.Integer(), nullable=False),
        sa.Column("bundle_fk", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("probability", sa.Float(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("positive", sa.Boolean(), nullable=True),
        sa.Column("risk_stage", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("report_text_used", sa.Boolean(), nullable=False),
        sa.Column("contributions", sa.JSON(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["bundle_fk"], ["bundles.id"]),
        sa.ForeignKeyConstraint(["job_fk"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_fk", "bundle_fk", name="uq_shadow_results_job_bundle"),
    )
    with op.batch_alter_table("shadow_results") as batch:
        batch.create_index(batch.f("ix_shadow_results_bundle_fk"), ["bundle_fk"], unique=False)
        batch.create_index(batch.f("ix_shadow_results_job_fk"), ["job_fk"], unique=False)

    with op.batch_alter_table("results") as batch:
        batch.add_column(
            sa.Column("bundle_sha256", sa.String(length=64), nullable=False, server_default="")
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("results") as batch:
        batch.drop_column("bundle_sha256")
    with op.batch_alter_table("shadow_results") as batch:
        batch.drop_index(batch.f("ix_shadow_results_job_fk"))
        batch.drop_index(batch.f("ix_shadow_results_bundle_fk"))
    op.drop_table("shadow_results")
    with op.batch_alter_table("bundles") as batch:
        batch.drop_index(batch.f("ix_bundles_role"))
    op.drop_table("bundles")
