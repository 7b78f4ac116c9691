"""verification: the challenges callers were put through (escalation and history)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import fsguard.store.models.base
from sqlalchemy.dialects import postgresql

revision: str = '0003'
down_revision: Union[str, None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('challenges',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('call_uuid', sa.String(length=64), nullable=False),
    sa.Column('node', sa.String(length=128), nullable=False),
    sa.Column('number', sa.String(length=32), nullable=True),
    sa.Column('dnis', sa.String(length=128), nullable=False),
    sa.Column('started_at', fsguard.store.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('ended_at', fsguard.store.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('triggers', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('code', sa.String(length=16), nullable=False),
    sa.Column('entered', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('early', sa.Boolean(), nullable=False),
    sa.Column('answered', sa.Boolean(), nullable=False),
    sa.Column('answered_seconds', sa.Float(), nullable=True),
    sa.Column('escalated', sa.Boolean(), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_challenges'))
    )
    with op.batch_alter_table('challenges', schema=None) as batch_op:
        batch_op.create_index('ix_challenges_call_uuid', ['call_uuid'], unique=False)
        batch_op.create_index('ix_challenges_number_started_at', ['number', 'started_at'], unique=False)
        batch_op.create_index('ix_challenges_started_at', ['started_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('challenges', schema=None) as batch_op:
        batch_op.drop_index('ix_challenges_started_at')
        batch_op.drop_index('ix_challenges_number_started_at')
        batch_op.drop_index('ix_challenges_call_uuid')

    op.drop_table('challenges')
