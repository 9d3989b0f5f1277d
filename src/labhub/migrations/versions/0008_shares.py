"""sharing: shares of an instance with users and groups, and an admin's opening of it to everyone

Additive only (a new table, a column with a server default), so replicas of the previous
version keep working while this runs (see docs/operations.md).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 10:00:00
"""

import sqlalchemy as sa
from alembic import op

import labhub.models.base

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shares",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("group_id", sa.Integer(), nullable=True),
        sa.Column("created_by", sa.String(length=63), nullable=False),
        sa.Column("created_at", labhub.models.base.UTCDateTime(), nullable=False),
        sa.CheckConstraint("(user_id IS NULL) <> (group_id IS NULL)", name=op.f("ck_shares_one_grantee")),
        sa.ForeignKeyConstraint(["instance_id"], ["instances.id"], name=op.f("fk_shares_instance_id_instances"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_shares_user_id_users"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"], name=op.f("fk_shares_group_id_groups"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shares")),
        sa.UniqueConstraint("instance_id", "user_id", name="uq_shares_instance_user"),
        sa.UniqueConstraint("instance_id", "group_id", name="uq_shares_instance_group"),
    )
    with op.batch_alter_table("shares") as batch:
        batch.create_index(batch.f("ix_shares_instance_id"), ["instance_id"], unique=False)
        batch.create_index(batch.f("ix_shares_user_id"), ["user_id"], unique=False)
        batch.create_index(batch.f("ix_shares_group_id"), ["group_id"], unique=False)
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("open_to", sa.String(length=8), server_default="", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("open_to")
    op.drop_table("shares")
