"""outbound: attempts, freezes and the per-number counting row

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import fsguard.store.models.base

revision: str = '0006'
down_revision: Union[str, None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('outbound_freezes',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('number', sa.String(length=32), nullable=False),
    sa.Column('created_at', fsguard.store.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('until', fsguard.store.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('lifted_at', fsguard.store.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('lifted_by', sa.String(length=128), nullable=True),
    sa.Column('lift_reason', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbound_freezes'))
    )
    with op.batch_alter_table('outbound_freezes', schema=None) as batch_op:
        batch_op.create_index('ix_outbound_freezes_number_until', ['number', 'until'], unique=False)

    op.create_table('outbound_numbers',
    sa.Column('number', sa.String(length=32), nullable=False),
    sa.Column('strikes_since', fsguard.store.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('updated_at', fsguard.store.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('number', name=op.f('pk_outbound_numbers'))
    )

    op.create_table('outbound_attempts',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('number', sa.String(length=32), nullable=False),
    sa.Column('at', fsguard.store.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('call_uuid', sa.String(length=64), nullable=True),
    sa.Column('node', sa.String(length=128), nullable=False),
    sa.Column('agent', sa.String(length=128), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('hangup_cause', sa.String(length=64), nullable=True),
    sa.Column('talk_seconds', sa.Float(), nullable=True),
    sa.Column('strike', sa.Boolean(), nullable=False),
    sa.Column('freeze_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['freeze_id'], ['outbound_freezes.id'], name=op.f('fk_outbound_attempts_freeze_id_outbound_freezes'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbound_attempts'))
    )
    with op.batch_alter_table('outbound_attempts', schema=None) as batch_op:
        batch_op.create_index('ix_outbound_attempts_number_at', ['number', 'at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('outbound_attempts', schema=None) as batch_op:
        batch_op.drop_index('ix_outbound_attempts_number_at')

    op.drop_table('outbound_attempts')
    op.drop_table('outbound_numbers')
    with op.batch_alter_table('outbound_freezes', schema=None) as batch_op:
        batch_op.drop_index('ix_outbound_freezes_number_until')

    op.drop_table('outbound_freezes')
