"""The registry: agents (local and external, sealed secrets), links, seen webhook ids, live agents.

Written to also adopt a store from before migrations (`.baton/agents.db` of Baton up to 1.2, copied into
`baton.db` by activities.database): tables that exist are kept, columns added since are added, the agents table of the
oldest stores (one row per id) is re-keyed by (agent_id, kind).

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

COLUMNS = "agent_id, kind, name, domain, secret_sealed, previous_secret_sealed, previous_valid_until, created_at, verified_at"


def _agents(name: str = "agents") -> None:
    op.create_table(
        name,
        sa.Column("agent_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("name", sa.Text),
        sa.Column("domain", sa.Text),
        sa.Column("secret_sealed", sa.Text, nullable=False),
        sa.Column("previous_secret_sealed", sa.Text),
        sa.Column("previous_valid_until", sa.Text),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("verified_at", sa.Text),
        sa.Column("protocol", sa.Text, nullable=False, server_default="baton"),
        sa.Column("a2a", sa.Text),
        sa.PrimaryKeyConstraint("agent_id", "kind"),
        sa.CheckConstraint("kind IN ('local', 'external')", name="agents_kind"),
    )


def upgrade() -> None:
    bind = op.get_bind()
    found = sa.inspect(bind)
    tables = set(found.get_table_names())
    if "agents" not in tables:
        _agents()
    else:
        if found.get_pk_constraint("agents").get("constrained_columns") != ["agent_id", "kind"]:
            # The oldest stores: one agent per id. Re-keyed so a local and an external agent may share one.
            op.rename_table("agents", "agents_v1")
            _agents()
            op.execute(f"INSERT INTO agents ({COLUMNS}) SELECT {COLUMNS} FROM agents_v1")
            op.drop_table("agents_v1")
        columns = {c["name"] for c in sa.inspect(bind).get_columns("agents")}
        with op.batch_alter_table("agents") as batch:
            if "protocol" not in columns:  # before A2A agents every external agent spoke Baton's protocol
                batch.add_column(sa.Column("protocol", sa.Text, nullable=False, server_default="baton"))
            if "a2a" not in columns:
                batch.add_column(sa.Column("a2a", sa.Text))
    if "links" not in tables:
        op.create_table(
            "links",
            sa.Column("agent_id", sa.Text, nullable=False),
            sa.Column("remote_conversation_id", sa.Text, nullable=False),
            sa.Column("conversation_id", sa.Text, nullable=False),
            sa.Column("handoff_id", sa.Text, nullable=False),
            sa.Column("created_at", sa.Text, nullable=False),
            sa.PrimaryKeyConstraint("agent_id", "remote_conversation_id"),
        )
    if "seen_webhooks" not in tables:
        op.create_table(
            "seen_webhooks",
            sa.Column("agent_id", sa.Text, nullable=False),
            sa.Column("webhook_id", sa.Text, nullable=False),
            sa.Column("response", sa.Text, nullable=False),
            sa.Column("seen_at", sa.Text, nullable=False),
            sa.PrimaryKeyConstraint("agent_id", "webhook_id"),
        )
    if "seen_webhooks_at" not in {i["name"] for i in sa.inspect(bind).get_indexes("seen_webhooks")}:
        op.create_index("seen_webhooks_at", "seen_webhooks", ["seen_at"])
    if "live_agents" not in tables:
        op.create_table(
            "live_agents",
            sa.Column("agent_id", sa.Text, primary_key=True),
            sa.Column("name", sa.Text, nullable=False),
            sa.Column("queues", sa.Text, nullable=False),
            sa.Column("skills", sa.Text, nullable=False),
            sa.Column("token_hash", sa.Text, nullable=False, unique=True),
            sa.Column("created_at", sa.Text, nullable=False),
            sa.Column("capacity", sa.Integer, nullable=False, server_default="3"),
        )
    elif "capacity" not in {c["name"] for c in sa.inspect(bind).get_columns("live_agents")}:
        with op.batch_alter_table("live_agents") as batch:  # before capacities every agent took three at once
            batch.add_column(sa.Column("capacity", sa.Integer, nullable=False, server_default="3"))


def downgrade() -> None:
    for table in ("live_agents", "seen_webhooks", "links", "agents"):
        op.drop_table(table)
