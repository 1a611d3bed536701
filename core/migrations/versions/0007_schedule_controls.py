"""Schedule controls: an alias's cycle schedule paused or not, and a pending "run a cycle now" request.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schedule_controls",
        sa.Column("alias", sa.String(), primary_key=True),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("paused_by", sa.String(), nullable=False),
        sa.Column("paused_reason", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("run_requested_by", sa.String(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("schedule_controls")
