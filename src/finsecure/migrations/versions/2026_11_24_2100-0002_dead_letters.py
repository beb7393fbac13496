"""dead letters

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 21:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import finsecure.core.database

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("ts", finsecure.core.database.UtcDateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=128), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=True),
        sa.Column("domain", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("raw", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
    )
    op.create_index(op.f("ix_dead_letters_ts"), "dead_letters", ["ts"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_dead_letters_ts"), table_name="dead_letters")
    op.drop_table("dead_letters")
