"""jobs: folders of uploaded inputs; a job's input folder, exit code and artifacts

Additive only (a table, nullable columns), so replicas of the previous version
keep working while this runs (see docs/operations.md).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 09:00:00
"""

import sqlalchemy as sa
from alembic import op

import labhub.models.base

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "folders",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("files", sa.Integer(), nullable=False),
        sa.Column("created_at", labhub.models.base.UTCDateTime(), nullable=False),
        sa.Column("updated_at", labhub.models.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], name=op.f("fk_folders_owner_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_folders")),
        sa.UniqueConstraint("owner_id", "name", name="uq_folders_owner_name"),
    )
    op.create_index(op.f("ix_folders_owner_id"), "folders", ["owner_id"])
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("input_folder", sa.String(length=63), nullable=True))
        batch.add_column(sa.Column("exit_code", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("output_bytes", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("artifacts_expire_at", labhub.models.base.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        for column in ("artifacts_expire_at", "output_bytes", "exit_code", "input_folder"):
            batch.drop_column(column)
    op.drop_index(op.f("ix_folders_owner_id"), table_name="folders")
    op.drop_table("folders")
