"""connectors: inbound kinds, single-use reply contexts, delivery retries and attempts, unsubscribed identities

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 21:40:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.add_column(sa.Column("unsubscribed", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=16), nullable=False, server_default="text"))
        batch_op.add_column(sa.Column("reply_context", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "delivery_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("platform", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("delivery_attempts", schema=None) as batch_op:
        batch_op.create_index("ix_delivery_attempts_message_id", ["message_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("delivery_attempts", schema=None) as batch_op:
        batch_op.drop_index("ix_delivery_attempts_message_id")
    op.drop_table("delivery_attempts")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("next_attempt_at")
        batch_op.drop_column("reply_context")
        batch_op.drop_column("kind")
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.drop_column("unsubscribed")
