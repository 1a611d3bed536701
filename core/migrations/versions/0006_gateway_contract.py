"""Gateway contract: per-key rate limits, idempotency fingerprints and in-flight claims.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD/DROP COLUMN: SQLite has both (3.35+), and nullable columns need no table rebuild
    op.add_column("api_keys", sa.Column("rpm", sa.Integer(), nullable=True))
    op.add_column("api_keys", sa.Column("tpm", sa.Integer(), nullable=True))
    op.add_column("interactions", sa.Column("idempotency_fingerprint", sa.String(64), nullable=True))
    op.create_table(
        "idempotency_claims",
        sa.Column("api_key_id", sa.String(), primary_key=True),
        sa.Column("idempotency_key", sa.String(), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("idempotency_claims")
    op.drop_column("interactions", "idempotency_fingerprint")
    op.drop_column("api_keys", "tpm")
    op.drop_column("api_keys", "rpm")
