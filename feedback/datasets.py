"""Curated dataset versions: one immutable directory per version plus a row in the store.

A version lives in `<home>/datasets/<id>/` (train.jsonl, eval.jsonl, manifest.json); its id is
"ds-" + the first 16 hex digits of the sha256 of its canonical content, so the same inputs give the
same id. The row indexes what the manifest holds; the source interaction ids stay in the manifest only,
as they can run to millions.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Column, Engine, String
from sqlmodel import Field, Session, SQLModel, select

from core.chat_format import EVAL_FILE, MANIFEST_FILE, TRAIN_FILE, VIEW_FILES
from core.clock import UTCDateTime, utcnow

DATASET_ID_PREFIX = "ds-"


def dataset_id_for(sha256: str) -> str:
    return DATASET_ID_PREFIX + sha256[:16]


class DatasetBase(SQLModel):
    alias: str = Field(index=True, description="The model alias whose traffic the dataset was curated from.")
    sha256: str = Field(sa_type=String(64), unique=True, index=True, description="Hash of the canonical content.")
    path: str = Field(description="Absolute path of the version's directory.")
    n_train: int = 0
    n_eval: int = 0
    counts: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    policy: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    window_start: datetime | None = Field(
        sa_type=UTCDateTime, default=None, description="Interactions created from here...")
    window_end: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow, description="...up to here (exclusive).")


class Dataset(DatasetBase, table=True):
    __tablename__ = "datasets"

    id: str = Field(primary_key=True)
    created_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow, index=True)


class DatasetPublic(DatasetBase):
    id: str
    created_at: datetime

    @property
    def train_path(self) -> Path:
        return Path(self.path) / TRAIN_FILE

    @property
    def eval_path(self) -> Path:
        return Path(self.path) / EVAL_FILE

    @property
    def manifest_path(self) -> Path:
        return Path(self.path) / MANIFEST_FILE

    def view_paths(self, view: str) -> tuple[Path, Path]:
        train, evaluation = VIEW_FILES[view]
        return Path(self.path) / train, Path(self.path) / evaluation

    def view_sizes(self, view: str) -> dict[str, int]:
        """{"train", "eval"} row counts of a view (zero for a view a version predating it does not have)."""
        if view == "sft":
            return {"train": self.n_train, "eval": self.n_eval}
        split = self.counts.get("views", {}).get(view, {}).get("split", {})
        return {"train": int(split.get("train", 0)), "eval": int(split.get("eval", 0))}

    def manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_path.read_text())


def _public(row: Dataset) -> DatasetPublic:
    public = DatasetPublic.model_validate(row)
    return public


def record_dataset(engine: Engine, dataset: Dataset) -> DatasetPublic:
    """Store the row of a version just written; a version already stored is returned as it is (immutable)."""
    with Session(engine) as session:
        existing = session.get(Dataset, dataset.id)
        if existing is not None:
            return _public(existing)
        session.add(dataset)
        session.commit()
        session.refresh(dataset)
        return _public(dataset)


def list_datasets(engine: Engine, alias: str | None = None) -> list[DatasetPublic]:
    """Versions, oldest first (the order they were built in)."""
    with Session(engine) as session:
        query = select(Dataset).order_by(Dataset.created_at, Dataset.id)  # type: ignore[arg-type]
        if alias is not None:
            query = query.where(Dataset.alias == alias)
        return [_public(row) for row in session.exec(query)]


def get_dataset(engine: Engine, dataset_id: str) -> DatasetPublic | None:
    with Session(engine) as session:
        row = session.get(Dataset, dataset_id)
        return _public(row) if row is not None else None


def latest_dataset(engine: Engine, alias: str) -> DatasetPublic | None:
    with Session(engine) as session:
        query = (
            select(Dataset)
            .where(Dataset.alias == alias)
            .order_by(Dataset.created_at.desc(), Dataset.id.desc())  # type: ignore[attr-defined]
            .limit(1)
        )
        row = session.exec(query).first()
        return _public(row) if row is not None else None
