"""recording tables (placeholder until the recording stage lands; the lead removes it if it stays empty)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import fsguard.models.base
from sqlalchemy import Text  # autogenerate renders JSONB as JSONB(astext_type=Text())

revision: str = '0004'
down_revision: Union[str, None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
