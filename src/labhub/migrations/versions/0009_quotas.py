"""quotas and the admission queue: users' and groups' limits, group priority and launch policy,
instances' priority and admission time, the admission lock

Additive only (new columns with server defaults, a new table), so replicas of the previous
version keep working while this runs (see docs/operations.md).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 17:00:00
"""

import sqlalchemy as sa
from alembic import op

import labhub.models.base

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("quota", sa.JSON(), nullable=True))
    with op.batch_alter_table("groups") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("self_service", sa.Boolean(), server_default=sa.true(), nullable=False))
        batch.add_column(sa.Column("policy", sa.JSON(), nullable=True))
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("admitted_at", labhub.models.base.UTCDateTime(), nullable=True))
    lock = op.create_table(
        "admission_lock",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admission_lock")),
    )
    op.bulk_insert(lock, [{"id": 1, "generation": 0}])


def downgrade() -> None:
    op.drop_table("admission_lock")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("admitted_at")
        batch.drop_column("priority")
    with op.batch_alter_table("groups") as batch:
        batch.drop_column("policy")
        batch.drop_column("self_service")
        batch.drop_column("priority")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("quota")
