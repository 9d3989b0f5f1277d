"""several replicas: replicas' heartbeats, instance leases, account deletions the reconciler drives

Every change is additive (a table, nullable columns, indexes), so replicas of
the previous version keep working while this runs (see docs/operations.md).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 15:00:00
"""

import sqlalchemy as sa
from alembic import op

import labhub.models.base

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "replicas",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("started_at", labhub.models.base.UTCDateTime(), nullable=False),
        sa.Column("heartbeat_at", labhub.models.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_replicas")),
    )
    op.create_index(op.f("ix_replicas_heartbeat_at"), "replicas", ["heartbeat_at"])
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(length=64), nullable=True))
        batch.create_index("ix_instances_claimed_by", ["claimed_by"])
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("deleting_by", sa.String(length=63), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("deleting_by")
    with op.batch_alter_table("instances") as batch:
        batch.drop_index("ix_instances_claimed_by")
        batch.drop_column("claimed_by")
    op.drop_index(op.f("ix_replicas_heartbeat_at"), table_name="replicas")
    op.drop_table("replicas")
