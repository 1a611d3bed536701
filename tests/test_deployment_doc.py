"""docs/deployment.md shows only commands the suite runs: each `tuneloop ...` line of its shell blocks is one of
the commands below, and the named test file runs it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# command as the doc writes it (environment assignments dropped, placeholders as written) -> (test file, text
# that file must contain to run it)
RUN_BY = {
    "tuneloop migrate": ("tests/test_migrations_on_purpose.py", '"migrate"'),
    "tuneloop serve --workers 2": ("tests/test_gateway_processes.py", '"serve", "--workers", "2"'),
    "tuneloop worker": ("tests/test_worker_leader.py", '"worker"'),
    "tuneloop train --dataset ds-... --processes 2": ("tests/test_trainer_distributed.py", '"--processes", "2"'),
}


def _doc_commands() -> list[str]:
    text = (ROOT / "docs" / "deployment.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            words = [w for w in shlex.split(line, comments=True) if not re.match(r"^[A-Z_]+=", w)]
            if words and words[0] == "tuneloop":
                commands.append(" ".join(words))
    return commands


def test_every_command_in_the_deployment_guide_is_run_by_a_test() -> None:
    commands = _doc_commands()
    assert len(commands) >= 4  # the guide's blocks were found
    for command in commands:
        assert command in RUN_BY, f"docs/deployment.md: {command!r} is run by no test (add one, then list it here)"
        test_file, needle = RUN_BY[command]
        assert needle in (ROOT / test_file).read_text(), f"{test_file} no longer runs {command!r}"
