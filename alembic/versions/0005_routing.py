"""routing tables (placeholder until the routing stage lands; the lead removes it if it stays empty)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import fsguard.models.base
from sqlalchemy import Text  # autogenerate renders JSONB as JSONB(astext_type=Text())

revision: str = '0005'
down_revision: Union[str, None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
