"""recording tables: recordings (purpose, retention, legal hold, integrity) and their masked intervals

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import fsguard.store.models.base

revision: str = '0004'
down_revision: Union[str, None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('recordings',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('call_uuid', sa.String(length=64), nullable=False),
    sa.Column('path', sa.String(length=1024), nullable=False),
    sa.Column('node', sa.String(length=128), nullable=False),
    sa.Column('direction', sa.String(length=16), nullable=False),
    sa.Column('number', sa.String(length=32), nullable=True),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('rule', sa.String(length=128), nullable=False),
    sa.Column('purpose', sa.String(length=32), nullable=False),
    sa.Column('consent', sa.Boolean(), nullable=False),
    sa.Column('stereo', sa.Boolean(), nullable=False),
    sa.Column('started_by', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('started_at', fsguard.store.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('ended_at', fsguard.store.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('retain_until', fsguard.store.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('legal_hold', sa.Boolean(), nullable=False),
    sa.Column('hold_reason', sa.String(length=512), nullable=False),
    sa.Column('held_at', fsguard.store.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('size_bytes', sa.BigInteger(), nullable=True),
    sa.Column('duration', sa.Float(), nullable=True),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('error', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_recordings')),
    sa.UniqueConstraint('call_uuid', name=op.f('uq_recordings_call_uuid'))
    )
    with op.batch_alter_table('recordings', schema=None) as batch_op:
        batch_op.create_index('ix_recordings_number', ['number'], unique=False)
        batch_op.create_index('ix_recordings_retain_until', ['retain_until'], unique=False)

    op.create_table('recording_masks',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('recording_id', sa.Integer(), nullable=False),
    sa.Column('started_at', fsguard.store.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('ended_at', fsguard.store.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('requested_by', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['recording_id'], ['recordings.id'], name=op.f('fk_recording_masks_recording_id_recordings'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_recording_masks'))
    )
    with op.batch_alter_table('recording_masks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_recording_masks_recording_id'), ['recording_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('recording_masks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_recording_masks_recording_id'))

    op.drop_table('recording_masks')
    with op.batch_alter_table('recordings', schema=None) as batch_op:
        batch_op.drop_index('ix_recordings_retain_until')
        batch_op.drop_index('ix_recordings_number')

    op.drop_table('recordings')
