"""The migrated `datasets` table matches the Dataset model, on SQLite and PostgreSQL; 0002 downgrades cleanly."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

from core.db import downgrade, make_engine, migrate
from feedback.datasets import Dataset, get_dataset, latest_dataset, list_datasets, record_dataset

CURATION_INDEX = "ix_interactions_alias_created_at_id"


def _only_0002(obj, name, type_, reflected, compare_to) -> bool:
    # Other packages own other tables (tests/test_schema.py checks them all); this checks what 0002 makes.
    table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", None)
    return table == "datasets" or (type_ == "index" and name == CURATION_INDEX)


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_migrated_schema_matches_the_model(db: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("sqlite_url" if db == "sqlite" else "pg_url")
    engine = make_engine(url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_object": _only_0002})
        diffs = compare_metadata(context, SQLModel.metadata)
    engine.dispose()
    assert Dataset.__tablename__ in SQLModel.metadata.tables
    assert diffs == []
    indexes = {index["name"] for index in inspect(make_engine(url)).get_indexes("interactions")}
    assert CURATION_INDEX in indexes


def test_downgrade_to_0001_drops_the_table_and_index(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    assert "datasets" in inspect(engine).get_table_names()
    downgrade(sqlite_url, "0001")
    assert "datasets" not in inspect(engine).get_table_names()
    assert CURATION_INDEX not in {index["name"] for index in inspect(engine).get_indexes("interactions")}
    migrate(sqlite_url)
    assert "datasets" in inspect(engine).get_table_names()
    engine.dispose()


def _row(dataset_id: str, alias: str, created: datetime) -> Dataset:
    return Dataset(
        id=dataset_id, alias=alias, sha256=dataset_id * 4, path=f"/data/{dataset_id}", n_train=3, n_eval=1,
        counts={"kept": 4}, policy={"eval_fraction": 0.05}, window_end=created, created_at=created,
    )


def test_rows_list_get_latest_and_stay_immutable(any_db_url: str) -> None:
    engine = make_engine(any_db_url)
    record_dataset(engine, _row("ds-a", "support", datetime(2026, 1, 1, tzinfo=UTC)))
    record_dataset(engine, _row("ds-b", "support", datetime(2026, 1, 2, tzinfo=UTC)))
    record_dataset(engine, _row("ds-c", "other", datetime(2026, 1, 3, tzinfo=UTC)))
    again = _row("ds-a", "support", datetime(2026, 2, 1, tzinfo=UTC))
    again.n_train = 999
    assert record_dataset(engine, again).n_train == 3  # a stored version is never rewritten

    assert [d.id for d in list_datasets(engine, "support")] == ["ds-a", "ds-b"]
    assert len(list_datasets(engine)) == 3
    latest = latest_dataset(engine, "support")
    assert latest is not None and latest.id == "ds-b"
    assert latest.window_end == datetime(2026, 1, 2, tzinfo=UTC)
    assert latest.counts == {"kept": 4}
    assert get_dataset(engine, "ds-missing") is None
    assert latest_dataset(engine, "nobody") is None
    engine.dispose()
