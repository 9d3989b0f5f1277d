"""trust model: origin grants (instance origins) and stored system accounts

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 06:00:00
"""

import sqlalchemy as sa
from alembic import op

import labhub.models.base

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "origin_grants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.String(length=32), nullable=False),
        sa.Column("login_session_id", sa.String(length=64), nullable=True),
        sa.Column("code_hash", sa.String(length=64), nullable=True),
        sa.Column("code_expires_at", labhub.models.base.UTCDateTime(), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=True),
        sa.Column("created_at", labhub.models.base.UTCDateTime(), nullable=False),
        sa.Column("expires_at", labhub.models.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_origin_grants_user_id_users"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["instance_id"], ["instances.id"],
                                name=op.f("fk_origin_grants_instance_id_instances"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["login_session_id"], ["sessions.id"],
                                name=op.f("fk_origin_grants_login_session_id_sessions"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_origin_grants")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_origin_grants_code_hash")),
        sa.UniqueConstraint("secret_hash", name=op.f("uq_origin_grants_secret_hash")),
    )
    with op.batch_alter_table("origin_grants", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_origin_grants_user_id"), ["user_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_origin_grants_instance_id"), ["instance_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_origin_grants_login_session_id"), ["login_session_id"], unique=False)

    op.create_table(
        "system_accounts",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("created_at", labhub.models.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_system_accounts_user_id_users"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_system_accounts")),
        sa.UniqueConstraint("user_id", name=op.f("uq_system_accounts_user_id")),
    )


def downgrade() -> None:
    op.drop_table("system_accounts")
    with op.batch_alter_table("origin_grants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_origin_grants_login_session_id"))
        batch_op.drop_index(batch_op.f("ix_origin_grants_instance_id"))
        batch_op.drop_index(batch_op.f("ix_origin_grants_user_id"))
    op.drop_table("origin_grants")
