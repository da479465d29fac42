"""help desk: case lifecycle, Japanese translations for staff, staff accounts, tokens, audit, canned replies, KB suggestions

Revision ID: 0003_helpdesk
Revises: 0002
Create Date: 2026-12-05 04:40:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = "0003_helpdesk"
down_revision: Union[str, Sequence[str], None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "staff_users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("login", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=8), nullable=False),
        sa.Column("password_hash", sa.String(length=256), nullable=False),
        sa.Column("failed_logins", sa.Integer(), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("login"),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("staff_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["staff_id"], ["staff_users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.create_index("ix_api_tokens_staff_id", ["staff_id"], unique=False)
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("staff_id", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(length=48), nullable=False),
        sa.Column("target_type", sa.String(length=32), nullable=True),
        sa.Column("target_id", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["staff_id"], ["staff_users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index("ix_audit_log_at", ["at"], unique=False)
        batch_op.create_index("ix_audit_log_staff_id", ["staff_id"], unique=False)
    op.create_table(
        "canned_replies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=128), nullable=False),
        sa.Column("text_ja", sa.Text(), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["created_by"], ["staff_users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("staff_notice_sent", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("text_ja", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("translated_by", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("translation_status", sa.String(length=12), nullable=True))
        batch_op.add_column(sa.Column("staff_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key("fk_messages_staff_id", "staff_users", ["staff_id"], ["id"], ondelete="SET NULL")
        batch_op.create_index("ix_messages_translation", ["translation_status"], unique=False)
    with op.batch_alter_table("escalations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("assignee_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("topic", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("category", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("night", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("summary_ja", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("first_message_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_foreign_key(
            "fk_escalations_assignee_id", "staff_users", ["assignee_id"], ["id"], ondelete="SET NULL"
        )
        batch_op.drop_index("ix_escalations_status")
        batch_op.create_index("ix_escalations_queue", ["status", "urgent", "created_at"], unique=False)
        batch_op.create_index("ix_escalations_language", ["language"], unique=False)
    op.create_table(
        "kb_suggestions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("escalation_id", sa.Integer(), nullable=True),
        sa.Column("question_ja", sa.Text(), nullable=False),
        sa.Column("answer_ja", sa.Text(), nullable=False),
        sa.Column("proposed_by", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("translations", sa.JSON(), nullable=True),
        sa.Column("draft_path", sa.String(length=512), nullable=True),
        sa.Column("decided_by", sa.Integer(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["escalation_id"], ["escalations.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["proposed_by"], ["staff_users.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["decided_by"], ["staff_users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("kb_suggestions")
    with op.batch_alter_table("escalations", schema=None) as batch_op:
        batch_op.drop_index("ix_escalations_language")
        batch_op.drop_index("ix_escalations_queue")
        batch_op.create_index("ix_escalations_status", ["status", "urgent"], unique=False)
        batch_op.drop_constraint("fk_escalations_assignee_id", type_="foreignkey")
        for column in ("resolved_at", "first_message_id", "summary_ja", "night", "category", "topic", "assignee_id"):
            batch_op.drop_column(column)
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_translation")
        batch_op.drop_constraint("fk_messages_staff_id", type_="foreignkey")
        for column in ("staff_id", "translation_status", "translated_by", "text_ja"):
            batch_op.drop_column(column)
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_column("staff_notice_sent")
    op.drop_table("canned_replies")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_log_staff_id")
        batch_op.drop_index("ix_audit_log_at")
    op.drop_table("audit_log")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_index("ix_api_tokens_staff_id")
    op.drop_table("api_tokens")
    op.drop_table("staff_users")
