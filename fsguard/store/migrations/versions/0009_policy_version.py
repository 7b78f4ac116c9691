"""policy version: the change counter the nodes' in-process policy snapshots follow

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

revision: str = '0009'
down_revision: Union[str, None] = '0008'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('policy_version',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_policy_version'))
    )
    op.create_table('policy_changes',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_policy_changes'))
    )
    with op.batch_alter_table('policy_changes', schema=None) as batch_op:
        batch_op.create_index('ix_policy_changes_version', ['version'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('policy_changes', schema=None) as batch_op:
        batch_op.drop_index('ix_policy_changes_version')
    op.drop_table('policy_changes')
    op.drop_table('policy_version')
