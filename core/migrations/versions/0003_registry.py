"""Model registry: versions with lineage, per-alias production/canary pointers, audit log.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("alias", sa.String(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("base_model", sa.String(), nullable=False),
        sa.Column("parent_id", sa.String(), sa.ForeignKey("model_versions.id"), nullable=True),
        sa.Column("adapter_path", sa.String(), nullable=True),
        sa.Column("merged_path", sa.String(), nullable=True),
        sa.Column("dataset_version_id", sa.String(), nullable=True),
        sa.Column("dataset_hash", sa.String(), nullable=True),
        sa.Column("training_config", sa.JSON(), nullable=False),
        sa.Column("library_versions", sa.JSON(), nullable=False),
        sa.Column("code_revision", sa.String(), nullable=True),
        sa.Column("training_metrics", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("files_manifest", sa.JSON(), nullable=False),
        sa.Column("eval_reports", sa.JSON(), nullable=False),
        sa.Column("gate_passed", sa.Boolean(), nullable=True),
        sa.Column("gate", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("gated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("canary_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("production_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("alias", "number", name="uq_model_versions_alias_number"),
    )
    op.create_index("ix_model_versions_alias", "model_versions", ["alias"])
    op.create_index("ix_model_versions_status", "model_versions", ["status"])

    op.create_table(
        "model_aliases",
        sa.Column("alias", sa.String(), primary_key=True),
        sa.Column("production_id", sa.String(), sa.ForeignKey("model_versions.id"), nullable=True),
        sa.Column("canary_id", sa.String(), sa.ForeignKey("model_versions.id"), nullable=True),
        sa.Column("canary_weight", sa.Integer(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )

    op.create_table(
        "registry_audit",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("alias", sa.String(), nullable=False),
        sa.Column("version_id", sa.String(), nullable=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("from_status", sa.String(16), nullable=True),
        sa.Column("to_status", sa.String(16), nullable=True),
        sa.Column("before", sa.JSON(), nullable=False),
        sa.Column("after", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_registry_audit_alias", "registry_audit", ["alias"])


def downgrade() -> None:
    op.drop_table("registry_audit")
    op.drop_table("model_aliases")
    op.drop_table("model_versions")
