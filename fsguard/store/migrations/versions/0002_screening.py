"""screening tables: list entries (allow / block / DNO) and per-number call counters

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import fsguard.store.models.base
from sqlalchemy import Text  # autogenerate renders JSONB as JSONB(astext_type=Text())

revision: str = '0002'
down_revision: Union[str, None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('list_entries',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('number', sa.String(length=32), nullable=False),
    sa.Column('is_prefix', sa.Boolean(), nullable=False),
    sa.Column('dnis', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('level', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=256), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('added_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', fsguard.store.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', fsguard.store.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', fsguard.store.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_list_entries')),
    sa.UniqueConstraint('number', 'dnis', 'is_prefix', name='uq_list_entries_key')
    )
    with op.batch_alter_table('list_entries', schema=None) as batch_op:
        batch_op.create_index('ix_list_entries_expires_at', ['expires_at'], unique=False)

    op.create_table('call_counters',
    sa.Column('number', sa.String(length=32), nullable=False),
    sa.Column('dnis', sa.String(length=64), nullable=False),
    sa.Column('bucket', sa.BigInteger(), nullable=False),
    sa.Column('calls', sa.Integer(), nullable=False),
    sa.Column('short_calls', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('number', 'dnis', 'bucket', name=op.f('pk_call_counters'))
    )
    with op.batch_alter_table('call_counters', schema=None) as batch_op:
        batch_op.create_index('ix_call_counters_bucket', ['bucket'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('call_counters', schema=None) as batch_op:
        batch_op.drop_index('ix_call_counters_bucket')

    op.drop_table('call_counters')
    with op.batch_alter_table('list_entries', schema=None) as batch_op:
        batch_op.drop_index('ix_list_entries_expires_at')

    op.drop_table('list_entries')
