"""Stored messages: conversations with their sequence counters, messages, read markers.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "conversation",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.SmallInteger, nullable=False),
        sa.Column("a", sa.BigInteger, nullable=False),
        sa.Column("b", sa.BigInteger, nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("kind", "a", "b", name="uq_conversation_key"),
        **MYSQL,
    )
    op.create_table(
        "message",
        sa.Column("mid", Id, primary_key=True, autoincrement=True),
        sa.Column("conv_id", sa.BigInteger, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("sender", sa.BigInteger, nullable=False),
        sa.Column("client_id", sa.String(64), nullable=True),
        sa.Column("createat", sa.BigInteger, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.UniqueConstraint("conv_id", "seq", name="uq_message_conv_seq"),
        sa.UniqueConstraint("sender", "client_id", name="uq_message_sender_client"),
        **MYSQL,
    )
    op.create_table(
        "readmark",
        sa.Column("userid", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("conv_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("read_seq", sa.BigInteger, nullable=False),
        **MYSQL,
    )


def downgrade() -> None:
    op.drop_table("readmark")
    op.drop_table("message")
    op.drop_table("conversation")
