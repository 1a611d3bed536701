"""The house rules that keep the code readable: imports point down the layers, no module reads the
environment or loads the settings except at the composition root, and no module grows past ~400 lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ["core", "feedback", "trainer", "registry", "gateway", "deploy"]
# core/settings.py is where the environment is read; a vLLM server inherits this process's environment.
MAY_READ_ENVIRONMENT = {"core/settings.py", "deploy/vllm.py"}
MAX_LINES = 400


def _modules(packages: list[str]) -> list[Path]:
    return sorted(path for package in packages for path in (ROOT / package).rglob("*.py")
                  if "migrations" not in path.parts)


def test_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def _calls_and_reads(path: Path, root: Path = ROOT) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "load_settings":
            found.append(f"{path.relative_to(root)}:{node.lineno} calls load_settings()")
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv") and \
                getattr(node.value, "id", "") == "os":
            found.append(f"{path.relative_to(root)}:{node.lineno} reads os.{node.attr}")
    return found


def test_library_code_never_loads_settings_or_reads_the_environment() -> None:
    offenders = [finding for path in _modules(LIBRARY) if str(path.relative_to(ROOT)) not in MAY_READ_ENVIRONMENT
                 for finding in _calls_and_reads(path)]
    assert offenders == []
    settings = ROOT / "core" / "settings.py"
    assert not [f for f in _calls_and_reads(settings) if "calls load_settings" in f]


def test_the_check_finds_what_it_looks_for(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom core.settings import load_settings\nx = load_settings()\ny = os.environ['A']\n")
    assert _calls_and_reads(sample, tmp_path) == ["sample.py:3 calls load_settings()", "sample.py:4 reads os.environ"]


def test_no_module_is_over_the_size_limit() -> None:
    long = {str(p.relative_to(ROOT)): n for p in _modules([*LIBRARY, "tuneloop"])
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
