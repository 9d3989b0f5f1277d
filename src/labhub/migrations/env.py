"""Alembic environment: runs on the connection the hub hands over."""

from alembic import context

from labhub.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only used through labhub.db
    raise RuntimeError("run migrations through `labhub db upgrade`")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
