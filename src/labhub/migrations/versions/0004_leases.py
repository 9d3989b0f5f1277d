"""several replicas: instance leases, and account deletions the reconciler drives

Every change is additive (nullable columns, one index), so replicas of the
previous version keep working while this runs (see docs/operations.md).

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
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("lease_until", labhub.models.base.UTCDateTime(), nullable=True))
        batch.create_index("ix_instances_claimed_by", ["claimed_by"])
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("deleting_by", sa.String(length=63), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("deleting_by")
    with op.batch_alter_table("instances") as batch:
        batch.drop_index("ix_instances_claimed_by")
        batch.drop_column("lease_until")
        batch.drop_column("claimed_by")
