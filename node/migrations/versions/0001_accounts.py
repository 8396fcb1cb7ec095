"""Accounts, sessions, contacts and communities.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "user",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("mobile", sa.String(20), nullable=False),
        sa.Column("passwd", sa.String(255), nullable=False),
        sa.Column("nickname", sa.String(64), nullable=False),
        sa.Column("avatar", sa.String(255), nullable=False),
        sa.Column("sex", sa.String(1), nullable=False),
        sa.Column("memo", sa.String(255), nullable=False),
        sa.Column("createat", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("mobile", name="uq_user_mobile"),
        **MYSQL,
    )
    op.create_table(
        "session",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("userid", sa.BigInteger, nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("createat", sa.BigInteger, nullable=False),
        sa.Column("expireat", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("token_hash", name="uq_session_token_hash"),
        **MYSQL,
    )
    op.create_index("ix_session_userid", "session", ["userid"])
    op.create_table(
        "contact",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("ownerid", sa.BigInteger, nullable=False),
        sa.Column("dstobj", sa.BigInteger, nullable=False),
        sa.Column("cate", sa.SmallInteger, nullable=False),
        sa.Column("memo", sa.String(255), nullable=False),
        sa.Column("createat", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("ownerid", "cate", "dstobj", name="uq_contact_owner_cate_dst"),
        **MYSQL,
    )
    op.create_index("ix_contact_dst_cate", "contact", ["dstobj", "cate"])
    op.create_table(
        "community",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(30), nullable=False),
        sa.Column("ownerid", sa.BigInteger, nullable=False),
        sa.Column("icon", sa.String(255), nullable=False),
        sa.Column("cate", sa.SmallInteger, nullable=False),
        sa.Column("memo", sa.String(255), nullable=False),
        sa.Column("createat", sa.BigInteger, nullable=False),
        **MYSQL,
    )
    op.create_index("ix_community_ownerid", "community", ["ownerid"])


def downgrade() -> None:
    op.drop_table("community")
    op.drop_table("contact")
    op.drop_table("session")
    op.drop_table("user")
