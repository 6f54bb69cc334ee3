"""Alembic's environment for Baton's store (activities.database runs it; `alembic` on the command line is not needed).
The connection comes from the caller, which holds the migration lock."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
# Each chain (activities.database: the registry's, the event stream's) keeps its own version table.
context.configure(connection=connection, target_metadata=None, render_as_batch=connection.dialect.name == "sqlite",
                  version_table=context.config.attributes.get("version_table", "alembic_version"))
with context.begin_transaction():
    context.run_migrations()
