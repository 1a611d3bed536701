"""The explicit migrations and the SQLModel tables describe the same schema, on SQLite and PostgreSQL."""

from __future__ import annotations

import importlib
import pkgutil

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from core.db import downgrade, make_engine, migrate

MODEL_PACKAGES = ("feedback", "gateway", "registry", "deploy")


def _import_all_models() -> None:
    for package_name in MODEL_PACKAGES:
        package = importlib.import_module(package_name)
        for module in pkgutil.iter_modules(package.__path__):
            if module.name in ("cli", "app", "__main__") or module.name.endswith("_cli"):
                continue
            importlib.import_module(f"{package_name}.{module.name}")


def _owned_by_models(name, type_, parent_names) -> bool:  # type: ignore[no-untyped-def]
    """APScheduler's job table is created by our migration but described by APScheduler, not by a model."""
    table = name if type_ == "table" else parent_names.get("table_name")
    return table != "apscheduler_jobs"


def test_migrated_schema_matches_the_models(any_db_url):
    _import_all_models()
    engine = make_engine(any_db_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"include_name": _owned_by_models})
        diffs = compare_metadata(context, SQLModel.metadata)
    assert diffs == []


def test_migrations_go_down_and_up_again(any_db_url):
    downgrade(any_db_url, "base")
    engine = make_engine(any_db_url)
    with engine.connect() as connection:
        tables = set(connection.dialect.get_table_names(connection)) - {"alembic_version"}
    assert tables == set()
    migrate(any_db_url)
    with engine.connect() as connection:
        assert "interactions" in connection.dialect.get_table_names(connection)
