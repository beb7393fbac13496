"""incident workflow, notes, suppressions, block list, response action retries

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 00:00:00

Incident statuses move from open/investigating/contained/resolved/closed to the workflow
new → triaged → investigating → resolved: open → new, contained → investigating, closed → resolved.
Response actions gain statuses (awaiting_approval, dead_letter, dry_run) and retry bookkeeping.

The CHECK constraints of the two status columns change in place. PostgreSQL drops and re-creates them.
SQLite cannot alter a constraint, and rebuilding ``incidents`` would fire the ON DELETE actions of the
tables that reference it (foreign keys are on, and cannot be turned off inside the migration's
transaction), so the constraint text is rewritten in the schema, the documented procedure for
changing CHECK constraints (https://sqlite.org/lang_altertable.html, "otheralter").
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import finsecure.core.database

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_INCIDENT = ("open", "investigating", "contained", "resolved", "closed")
NEW_INCIDENT = ("new", "triaged", "investigating", "resolved")
UP_MAP = {"open": "new", "contained": "investigating", "closed": "resolved"}
DOWN_MAP = {"new": "open", "triaged": "investigating"}
OLD_ACTION = ("pending", "succeeded", "failed", "cancelled")
NEW_ACTION = (
    "pending", "awaiting_approval", "succeeded", "failed", "dead_letter", "dry_run", "cancelled",
)  # fmt: skip
DOWN_ACTION_MAP = {"awaiting_approval": "pending", "dead_letter": "failed", "dry_run": "cancelled"}


def _check(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _remap(table: str, column: str, mapping: dict[str, str]) -> None:
    status = sa.table(table, sa.column(column, sa.String()))
    for old, new in mapping.items():
        op.execute(status.update().where(status.c[column] == old).values({column: new}))


def _change_check(
    table: str, name: str, old: Sequence[str], new: Sequence[str], mapping: dict[str, str]
) -> None:
    """Allow ``new`` instead of ``old`` in ``table.status`` and move the rows by ``mapping``."""
    column = "status"
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        old_sql, new_sql = f"CHECK ({_check(column, old)})", f"CHECK ({_check(column, new)})"
        found = bind.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).scalar_one()
        if old_sql not in found:
            raise RuntimeError(f"{table}: constraint {name} is not {old_sql}")
        version = bind.exec_driver_sql("PRAGMA schema_version").scalar_one()
        bind.exec_driver_sql("PRAGMA writable_schema = ON")
        bind.exec_driver_sql(
            "UPDATE sqlite_master SET sql = replace(sql, ?, ?) WHERE type = 'table' AND name = ?",
            (old_sql, new_sql, table),
        )
        bind.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
        bind.exec_driver_sql("PRAGMA writable_schema = OFF")
        _remap(table, column, mapping)
    else:
        op.drop_constraint(op.f(name), table, type_="check")
        _remap(table, column, mapping)
        op.create_check_constraint(op.f(name), table, _check(column, new))


def upgrade() -> None:
    _change_check("incidents", "ck_incidents_incident_status", OLD_INCIDENT, NEW_INCIDENT, UP_MAP)
    _change_check("response_actions", "ck_response_actions_action_status", OLD_ACTION, NEW_ACTION, {})
    with op.batch_alter_table("response_actions", recreate="never") as batch:
        batch.add_column(sa.Column("playbook_id", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("next_attempt_at", finsecure.core.database.UtcDateTime(timezone=True), nullable=True)
        )
        batch.add_column(sa.Column("approved_by", sa.String(length=128), nullable=True))
        batch.add_column(
            sa.Column("approved_at", finsecure.core.database.UtcDateTime(timezone=True), nullable=True)
        )
    if op.get_bind().dialect.name != "sqlite":  # SQLite cannot drop a default; the model sets it anyway
        op.alter_column("response_actions", "attempts", server_default=None)
    op.create_table(
        "incident_notes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("incident_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("author_id", sa.Integer(), nullable=True),
        sa.Column("author", sa.String(length=128), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", finsecure.core.database.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["author_id"], ["users.id"], name=op.f("fk_incident_notes_author_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["incident_id"],
            ["incidents.id"],
            name=op.f("fk_incident_notes_incident_id_incidents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incident_notes")),
    )
    op.create_index(op.f("ix_incident_notes_incident_id"), "incident_notes", ["incident_id"], unique=False)
    op.create_table(
        "suppressions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("rule_id", sa.String(length=128), nullable=True),
        sa.Column("entity_type", sa.String(length=32), nullable=True),
        sa.Column("entity_id", sa.String(length=128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_by_id", sa.Integer(), nullable=True),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", finsecure.core.database.UtcDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", finsecure.core.database.UtcDateTime(timezone=True), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.Column("last_hit_at", finsecure.core.database.UtcDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by_id"],
            ["users.id"],
            name=op.f("fk_suppressions_created_by_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_suppressions")),
    )
    op.create_index(op.f("ix_suppressions_expires_at"), "suppressions", ["expires_at"], unique=False)
    op.create_table(
        "blocklist",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("entity_type", sa.String(length=32), nullable=False),
        sa.Column("entity_id", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", finsecure.core.database.UtcDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", finsecure.core.database.UtcDateTime(timezone=True), nullable=True),
        sa.Column("action_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.ForeignKeyConstraint(
            ["action_id"],
            ["response_actions.id"],
            name=op.f("fk_blocklist_action_id_response_actions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_blocklist")),
        sa.UniqueConstraint("entity_type", "entity_id", name=op.f("uq_blocklist_entity_type_entity_id")),
    )
    op.create_index(op.f("ix_blocklist_expires_at"), "blocklist", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_blocklist_expires_at"), table_name="blocklist")
    op.drop_table("blocklist")
    op.drop_index(op.f("ix_suppressions_expires_at"), table_name="suppressions")
    op.drop_table("suppressions")
    op.drop_index(op.f("ix_incident_notes_incident_id"), table_name="incident_notes")
    op.drop_table("incident_notes")
    with op.batch_alter_table("response_actions", recreate="never") as batch:
        for column in ("approved_at", "approved_by", "next_attempt_at", "attempts", "playbook_id"):
            batch.drop_column(column)
    _change_check(
        "response_actions", "ck_response_actions_action_status", NEW_ACTION, OLD_ACTION, DOWN_ACTION_MAP
    )
    _change_check("incidents", "ck_incidents_incident_status", NEW_INCIDENT, OLD_INCIDENT, DOWN_MAP)
