"""services: a service's public flag, whether it scales to zero, how many replicas serve it

Additive only (columns with server defaults), so replicas of the previous version keep
working while this runs (see docs/operations.md).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("public", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.add_column(sa.Column("min_replicas", sa.Integer(), server_default="1", nullable=False))
        batch.add_column(sa.Column("replicas", sa.Integer(), server_default="1", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("replicas")
        batch.drop_column("min_replicas")
        batch.drop_column("public")
