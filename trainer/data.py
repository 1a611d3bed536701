"""Reading a dataset version: `<home>/datasets/<id>/` with one view's train/eval files + `manifest.json`.

The format is core.chat_format's: sft lines hold `{"messages": [...]}` ending in the answer; kto lines
`{"prompt": [...], "completion": str, "label": bool}`; dpo lines `{"prompt": [...], "chosen": str, "rejected":
str}` (other keys are ignored). Bad lines fail with the file and line number, before any model loads.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.chat_format import MANIFEST_FILE, VIEW_FILES, check_messages, content_sha256, dataset_line


class DatasetError(ValueError):
    """A dataset version that cannot be trained on; the message names the file (and line)."""


@dataclass
class DatasetVersion:
    """A loaded view of a dataset version: its rows of both splits plus the version's identity.

    sft rows are message lists; kto and dpo rows are dicts with `prompt` (messages) and their answers."""

    path: Path
    id: str
    sha256: str
    train: list[Any]
    eval: list[Any]
    file_sha256: dict[str, str] = field(default_factory=dict)
    view: str = "sft"

    def identity(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sha256": self.sha256,
            "path": str(self.path),
            "view": self.view,
            "train_examples": len(self.train),
            "eval_examples": len(self.eval),
            "file_sha256": self.file_sha256,
        }


def resolve_dataset_dir(id_or_path: str | Path, home: Path) -> Path:
    """A dataset id under `<home>/datasets/`, or a directory path given directly."""
    direct = Path(id_or_path).expanduser()
    if (direct / "manifest.json").is_file():
        return direct.resolve()
    under_home = home / "datasets" / str(id_or_path)
    if (under_home / "manifest.json").is_file():
        return under_home.resolve()
    raise DatasetError(f"no dataset version {id_or_path!r}: neither {direct} nor {under_home} holds a manifest.json")


def _parse_messages(raw: Any, where: str, *, answered: bool = True) -> list[dict[str, str]]:
    if not isinstance(raw, dict) or not isinstance(raw.get("messages"), list) or not raw["messages"]:
        raise DatasetError(f"{where}: expected an object with a non-empty 'messages' list")
    messages, reason = check_messages(raw["messages"], answered=answered)
    if messages is None:
        raise DatasetError(f"{where}: {reason}")
    return messages


def _parse_preference(raw: Any, where: str, view: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise DatasetError(f"{where}: expected an object")
    prompt = raw.get("prompt")
    if not isinstance(prompt, list) or not prompt:
        raise DatasetError(f"{where}: 'prompt' must be a non-empty list of messages")
    messages = _parse_messages({"messages": prompt}, where, answered=False)
    texts = ("completion",) if view == "kto" else ("chosen", "rejected")
    for name in texts:
        if not isinstance(raw.get(name), str) or not raw[name].strip():
            raise DatasetError(f"{where}: '{name}' must be a non-empty string")
    row: dict[str, Any] = {"prompt": messages, **{name: raw[name] for name in texts}}
    if view == "kto":
        if not isinstance(raw.get("label"), bool):
            raise DatasetError(f"{where}: 'label' must be true or false")
        row["label"] = raw["label"]
    return row


def read_split(path: Path, view: str = "sft") -> list[Any]:
    if not path.is_file():
        if view != "sft":  # versions built before the preference views have none
            return []
        raise DatasetError(f"{path}: missing")
    examples = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{path}:{number}: not JSON ({err.msg})") from None
            where = f"{path}:{number}"
            examples.append(_parse_messages(raw, where) if view == "sft" else _parse_preference(raw, where, view))
    return examples


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(directory: str | Path) -> dict[str, Any]:
    root = Path(directory).resolve()
    try:
        manifest = json.loads((root / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        raise DatasetError(f"{root / MANIFEST_FILE}: missing") from None
    except json.JSONDecodeError as err:
        raise DatasetError(f"{root / MANIFEST_FILE}: not JSON ({err.msg})") from None
    if not isinstance(manifest, dict) or not manifest.get("id") or not manifest.get("sha256"):
        raise DatasetError(f"{root / MANIFEST_FILE}: needs 'id' and 'sha256'")
    return manifest


def load_dataset_version(directory: str | Path, view: str = "sft") -> DatasetVersion:
    """Read and check one view of a dataset version directory."""
    root = Path(directory).resolve()
    manifest = read_manifest(root)
    train_name, eval_name = VIEW_FILES[view]
    train, evaluation = read_split(root / train_name, view), read_split(root / eval_name, view)
    if not train:
        raise DatasetError(f"{root / train_name}: no examples")
    return DatasetVersion(
        path=root,
        id=str(manifest["id"]),
        sha256=str(manifest["sha256"]),
        train=train,
        eval=evaluation,
        file_sha256={name: _file_digest(root / name) for name in (train_name, eval_name) if (root / name).exists()},
        view=view,
    )


def write_dataset_version(
    directory: str | Path, dataset_id: str, train: list[dict], evaluation: list[dict],
    views: dict[str, tuple[list[dict], list[dict]]] | None = None, alias: str = "",
) -> Path:
    """Write a dataset version in the shared layout and hashing (for tests, demos and benchmarks); `views` adds
    kto/dpo rows as (train, eval), with the view counts a curated manifest has."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    splits = {"sft": (train, evaluation), **(views or {})}
    counts: dict[str, Any] = {"views": {}}
    file_sha: dict[str, str] = {}
    for view, (view_train, view_eval) in splits.items():
        for name, rows in zip(VIEW_FILES[view], (view_train, view_eval), strict=True):
            data = "".join(dataset_line(row) + "\n" for row in rows).encode()
            (root / name).write_bytes(data)
            file_sha[name] = hashlib.sha256(data).hexdigest()
        counts["views"][view] = {"split": {"train": len(view_train), "eval": len(view_eval)}}
        if view == "kto":
            desirable = sum(1 for row in view_train if row["label"])
            counts["views"]["kto"]["labels"] = {"desirable": desirable, "undesirable": len(view_train) - desirable}
            counts["views"]["kto"]["selected"] = {"thumbs_up": desirable, "thumbs_down": len(view_train) - desirable}
    manifest = {"id": dataset_id, "sha256": content_sha256(alias, file_sha), "counts": counts}
    (root / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return root
