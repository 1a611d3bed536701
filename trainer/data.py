"""Reading a dataset version: `<home>/datasets/<id>/{train,eval}.jsonl` + `manifest.json`.

Each jsonl line holds `{"messages": [{"role": ..., "content": ...}, ...]}` (other keys are ignored).
Bad lines fail with the file and line number, before any model loads.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")


class DatasetError(ValueError):
    """A dataset version that cannot be trained on; the message names the file (and line)."""


@dataclass
class DatasetVersion:
    """A loaded dataset version: chat examples of both splits plus its identity."""

    path: Path
    id: str
    sha256: str
    train: list[list[dict[str, str]]]
    eval: list[list[dict[str, str]]]
    file_sha256: dict[str, str] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sha256": self.sha256,
            "path": str(self.path),
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


def _parse_messages(raw: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(raw, dict) or not isinstance(raw.get("messages"), list) or not raw["messages"]:
        raise DatasetError(f"{where}: expected an object with a non-empty 'messages' list")
    messages = []
    for index, message in enumerate(raw["messages"]):
        if not isinstance(message, dict):
            raise DatasetError(f"{where}: messages[{index}] is not an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES or not isinstance(content, str):
            raise DatasetError(f"{where}: messages[{index}] needs role in {ROLES} and string content")
        messages.append({"role": role, "content": content})  # drop extra keys the chat template never sees
    if not any(m["role"] == "assistant" for m in messages):
        raise DatasetError(f"{where}: no assistant turn to learn from")
    return messages


def read_split(path: Path) -> list[list[dict[str, str]]]:
    if not path.is_file():
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
            examples.append(_parse_messages(raw, f"{path}:{number}"))
    return examples


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_dataset_version(directory: str | Path) -> DatasetVersion:
    """Read and check a dataset version directory."""
    root = Path(directory).resolve()
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except FileNotFoundError:
        raise DatasetError(f"{root / 'manifest.json'}: missing") from None
    except json.JSONDecodeError as err:
        raise DatasetError(f"{root / 'manifest.json'}: not JSON ({err.msg})") from None
    if not isinstance(manifest, dict) or not manifest.get("id") or not manifest.get("sha256"):
        raise DatasetError(f"{root / 'manifest.json'}: needs 'id' and 'sha256'")
    train, evaluation = read_split(root / "train.jsonl"), read_split(root / "eval.jsonl")
    if not train:
        raise DatasetError(f"{root / 'train.jsonl'}: no examples")
    return DatasetVersion(
        path=root,
        id=str(manifest["id"]),
        sha256=str(manifest["sha256"]),
        train=train,
        eval=evaluation,
        file_sha256={name: _file_digest(root / name) for name in ("train.jsonl", "eval.jsonl")},
    )


def write_dataset_version(directory: str | Path, dataset_id: str, train: list[dict], evaluation: list[dict]) -> Path:
    """Write a dataset version in the shared layout (for tests, demos and benchmarks)."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    for name, rows in (("train.jsonl", train), ("eval.jsonl", evaluation)):
        text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
        (root / name).write_text(text, encoding="utf-8")
        digest.update(text.encode())
    (root / "manifest.json").write_text(json.dumps({"id": dataset_id, "sha256": digest.hexdigest()}, indent=2))
    return root
