"""identity: OIDC identities, status reasons, membership sources, admin-issued tokens

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 10:00:00
"""

import sqlalchemy as sa
from alembic import op

import labhub.models.base

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "identities",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=63), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("created_at", labhub.models.base.UTCDateTime(), nullable=False),
        sa.Column("last_login_at", labhub.models.base.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_identities_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identities")),
        sa.UniqueConstraint("provider", "subject", name=op.f("uq_identities_provider")),
    )
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_identities_user_id"), ["user_id"], unique=False)

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("status_reason", sa.String(length=255), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("status_changed_at", labhub.models.base.UTCDateTime(), nullable=True))
    with op.batch_alter_table("memberships", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source", sa.String(length=64), nullable=False, server_default=""))
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("issued_by", sa.String(length=63), nullable=True))
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index("ix_audit_events_target_at", ["target", "at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_events_target_at")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("issued_by")
    with op.batch_alter_table("memberships", schema=None) as batch_op:
        batch_op.drop_column("source")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("status_changed_at")
        batch_op.drop_column("status_reason")
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_identities_user_id"))
    op.drop_table("identities")
