"""The files of a registered version: a sha256 manifest fixed at registration, and read-only permissions.

A version's weights must never change under its id (a canary comparison or a rollback would otherwise
compare or restore something else), so registration records every file's digest and drops write bits;
`verify_manifest` tells whether the files on disk are still the ones registered.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

CHUNK_BYTES = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _files_under(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file())


def build_manifest(paths: dict[str, str | None]) -> dict[str, str]:
    """{label/relative path: sha256} for each local file or directory in `paths` (label -> path).

    Paths that are not on this machine (a hub id for a base model) contribute nothing.
    """
    manifest: dict[str, str] = {}
    for label, raw in paths.items():
        if not raw:
            continue
        root = Path(raw)
        if not root.exists():
            continue
        for file in _files_under(root):
            relative = file.name if root.is_file() else file.relative_to(root).as_posix()
            manifest[f"{label}/{relative}"] = sha256_file(file)
    return manifest


def verify_manifest(paths: dict[str, str | None], manifest: dict[str, str]) -> list[str]:
    """Differences between the files on disk and the registered manifest (empty: unchanged)."""
    current = build_manifest(paths)
    problems = [f"missing: {name}" for name in sorted(manifest.keys() - current.keys())]
    problems += [f"added: {name}" for name in sorted(current.keys() - manifest.keys())]
    problems += [
        f"changed: {name}" for name in sorted(manifest.keys() & current.keys()) if manifest[name] != current[name]
    ]
    return problems


def make_read_only(raw: str | None) -> None:
    """Drop the write bits of every file under `raw` (a guard against accidental edits, not a security boundary)."""
    if not raw or not Path(raw).exists():
        return
    for file in _files_under(Path(raw)):
        mode = file.stat().st_mode
        os.chmod(file, mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
