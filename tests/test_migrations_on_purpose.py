"""Migrations happen only on purpose (`tuneloop migrate`, the start of serve and worker), one process at a time;
other commands check the schema and say what to run; a database newer than the code is refused."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, text

from core.db import current_revision, head_revision, migrate, migration_lock, normalise_url


def _tuneloop(home: Path, url: str, *args: str, wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    env = {**os.environ, "TUNELOOP_HOME": str(home), "TUNELOOP_DATABASE_URL": url, "COLUMNS": "200"}
    command = [sys.executable, "-m", "tuneloop.cli", *args]
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def _poll(condition, what: str, timeout_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_read_only_commands_never_migrate_and_say_what_to_run(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    for command in (["models", "list"], ["keys", "list"], ["cycle", "list"], ["datasets", "list"]):
        result = _tuneloop(tmp_path, url, *command)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "has no tuneloop schema yet: run `tuneloop migrate`" in result.stdout, command
        assert "Traceback" not in result.stdout + result.stderr
    assert current_revision(url) is None  # nothing was created
    done = _tuneloop(tmp_path, url, "migrate")
    assert done.returncode == 0 and "database at head" in done.stdout, done.stdout + done.stderr
    assert current_revision(url) == head_revision()
    listed = _tuneloop(tmp_path, url, "models", "list")
    assert listed.returncode == 0, listed.stdout + listed.stderr  # the control: the same command works now


def test_a_database_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'newer.db'}"
    migrate(url)
    engine = create_engine(url)
    with engine.begin() as connection:  # as a later release would leave it
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    engine.dispose()
    for command in (["migrate"], ["models", "list"], ["serve"], ["worker"]):
        result = _tuneloop(tmp_path, url, *command)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "9999_from_the_future, newer than this code knows" in result.stdout, (command, result.stdout)
        assert "Traceback" not in result.stdout + result.stderr
    assert current_revision(url) == "9999_from_the_future"  # untouched


def test_migrations_wait_for_the_lock_on_postgresql(empty_pg_url: str, tmp_path: Path) -> None:
    """A second `tuneloop migrate` waits on the advisory lock while another process migrates; then finds the
    schema at head."""
    pg_url = empty_pg_url
    engine = create_engine(normalise_url(pg_url))
    with migration_lock(pg_url):
        waiting = _tuneloop(tmp_path, pg_url, "migrate", wait=False)

        def blocked() -> bool:
            with engine.connect() as connection:
                return bool(connection.execute(text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")).scalar())

        _poll(blocked, "the second migrate never waited on the advisory lock")
        assert waiting.poll() is None and current_revision(pg_url) is None  # nothing migrated meanwhile
    out, _ = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, out
    assert current_revision(pg_url) == head_revision()
    engine.dispose()


def test_migrations_wait_for_the_lock_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    with migration_lock(url):
        waiting = _tuneloop(tmp_path, url, "migrate", wait=False)
        # the kernel lists a process blocked on an flock with "->" in /proc/locks
        _poll(lambda: any(f" {waiting.pid} " in line and "->" in line
                          for line in Path("/proc/locks").read_text().splitlines()),
              "the second migrate never waited on the file lock")
        assert waiting.poll() is None and current_revision(url) is None
    out, _ = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, out
    assert current_revision(url) == head_revision()
