"""routing tables: customers and their telephone numbers

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import fsguard.store.models.base

revision: str = '0005'
down_revision: Union[str, None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('customers',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('account_id', sa.String(length=64), nullable=True),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('vip', sa.Boolean(), nullable=False),
    sa.Column('queue', sa.String(length=128), nullable=True),
    sa.Column('agent', sa.String(length=128), nullable=True),
    sa.Column('region', sa.String(length=64), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('created_at', fsguard.store.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', fsguard.store.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_customers')),
    sa.UniqueConstraint('account_id', name=op.f('uq_customers_account_id'))
    )
    # one customer, several numbers: the number is the key the call-time lookup probes
    op.create_table('customer_numbers',
    sa.Column('number', sa.String(length=32), nullable=False),
    sa.Column('customer_id', sa.Integer(), nullable=False),
    sa.Column('created_at', fsguard.store.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_customer_numbers_customer_id_customers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('number', name=op.f('pk_customer_numbers'))
    )
    with op.batch_alter_table('customer_numbers', schema=None) as batch_op:
        batch_op.create_index('ix_customer_numbers_customer_id', ['customer_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('customer_numbers', schema=None) as batch_op:
        batch_op.drop_index('ix_customer_numbers_customer_id')

    op.drop_table('customer_numbers')
    op.drop_table('customers')
