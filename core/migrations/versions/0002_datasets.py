"""Curated dataset versions (feedback/datasets.py), and the index curation reads interactions by.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("alias", sa.String(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("n_train", sa.Integer(), nullable=False),
        sa.Column("n_eval", sa.Integer(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_datasets_alias", "datasets", ["alias"])
    op.create_index("ix_datasets_sha256", "datasets", ["sha256"], unique=True)
    op.create_index("ix_datasets_created_at", "datasets", ["created_at"])
    # Keyset pages of one alias in (created_at, id) order: a range scan, no sort per page.
    op.create_index("ix_interactions_alias_created_at_id", "interactions", ["model_alias", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_interactions_alias_created_at_id", table_name="interactions")
    op.drop_table("datasets")
