"""review: keyword review of recorded calls (results and hits)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import fsguard.store.models.base

revision: str = '0008'
down_revision: Union[str, None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('review_results',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('recording_id', sa.Integer(), nullable=False),
    sa.Column('call_uuid', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('token', sa.String(length=36), nullable=False),
    sa.Column('claimed_by', sa.String(length=128), nullable=False),
    sa.Column('claimed_at', fsguard.store.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', fsguard.store.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('channel', sa.Integer(), nullable=True),
    sa.Column('seconds', sa.Float(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['recording_id'], ['recordings.id'], name=op.f('fk_review_results_recording_id_recordings'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_review_results')),
    sa.UniqueConstraint('recording_id', name=op.f('uq_review_results_recording_id'))
    )
    with op.batch_alter_table('review_results', schema=None) as batch_op:
        batch_op.create_index('ix_review_results_state', ['state'], unique=False)

    op.create_table('review_hits',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('result_id', sa.Integer(), nullable=False),
    sa.Column('recording_id', sa.Integer(), nullable=False),
    sa.Column('call_uuid', sa.String(length=64), nullable=False),
    sa.Column('direction', sa.String(length=16), nullable=False),
    sa.Column('phrase', sa.String(length=128), nullable=False),
    sa.Column('second', sa.Float(), nullable=False),
    sa.Column('end_second', sa.Float(), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('freeze_id', sa.Integer(), nullable=True),
    sa.Column('created_at', fsguard.store.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('reviewed_at', fsguard.store.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('reviewed_by', sa.String(length=128), nullable=True),
    sa.Column('review_reason', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['recording_id'], ['recordings.id'], name=op.f('fk_review_hits_recording_id_recordings'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['result_id'], ['review_results.id'], name=op.f('fk_review_hits_result_id_review_results'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_review_hits'))
    )
    with op.batch_alter_table('review_hits', schema=None) as batch_op:
        batch_op.create_index('ix_review_hits_open', ['reviewed_at', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_review_hits_call_uuid'), ['call_uuid'], unique=False)
        batch_op.create_index(batch_op.f('ix_review_hits_recording_id'), ['recording_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_review_hits_result_id'), ['result_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('review_hits', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_review_hits_result_id'))
        batch_op.drop_index(batch_op.f('ix_review_hits_recording_id'))
        batch_op.drop_index(batch_op.f('ix_review_hits_call_uuid'))
        batch_op.drop_index('ix_review_hits_open')

    op.drop_table('review_hits')
    with op.batch_alter_table('review_results', schema=None) as batch_op:
        batch_op.drop_index('ix_review_results_state')

    op.drop_table('review_results')
