"""extend: when an instance's owner was last warned that it expires (NULL: not for this expiry)

Additive only (a nullable column), so replicas of the previous version keep working while
this runs (see docs/operations.md).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 09:00:00
"""

import sqlalchemy as sa
from alembic import op

import labhub.models.base

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("expiry_warned_at", labhub.models.base.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("expiry_warned_at")
