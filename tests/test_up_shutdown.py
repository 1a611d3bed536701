"""`tuneloop up` stopped the way process managers stop it (SIGTERM) leaves no process behind: neither its gateway
and worker processes nor the vLLM servers the worker started."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, select

from core.db import make_engine
from core.deployments_table import Deployment

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sigterm_stops_the_vllm_servers_it_started(tmp_path: Path, demo_model_dir: Path) -> None:
    env = {**os.environ, "TUNELOOP_HOME": str(tmp_path), "TUNELOOP_PORT": str(_free_port()), "HF_HUB_OFFLINE": "1",
           "TUNELOOP_BASE_MODEL": str(demo_model_dir)}
    tuneloop = Path(sys.executable).with_name("tuneloop")
    proc = subprocess.Popen([str(tuneloop), "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    seen = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # up prints its banner once vLLM and the gateway answer
            seen.append(line)
            if line.startswith("gateway pid"):
                break
        else:
            pytest.fail("tuneloop up exited before serving:\n" + "".join(seen[-30:]))
        # SIGTERM as soon as the banner is out: the window in which a late-installed handler lost the servers
        engine = make_engine(f"sqlite:///{tmp_path / 'tuneloop.db'}")
        with Session(engine) as session:
            running = session.exec(select(Deployment).where(Deployment.status == "running")).all()
        pids = [d.pid for d in running if d.pid]
        assert pids and all(_alive(pid) for pid in pids)  # the control: a live server to stop
        assert any(line.startswith("scheduled: improvement cycle") for line in seen)  # the worker leads
        children = [int(pid) for pid in re.findall(r"pid (\d+)", seen[-1])]  # the gateway's and the worker's
        assert len(children) == 2 and all(_alive(pid) for pid in children)
        # the banner names the ops console, and the admin key it points to signs in there
        console_url = re.search(r"Ops console: (http://\S+/console) \(sign in with the admin key in (\S+)\)",
                                "".join(seen))
        assert console_url is not None, "".join(seen[-20:])
        with httpx.Client(timeout=10) as browser:
            key = Path(console_url.group(2)).read_text().strip()
            assert browser.post(console_url.group(1) + "/signin", data={"key": key}).status_code == 303
            assert browser.get(console_url.group(1)).status_code == 200
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, "".join(seen[-20:]) + rest  # the cleanup ran and exited; not killed by the signal
    with Session(engine) as session:
        statuses = [d.status for d in session.exec(select(Deployment)).all()]
    assert statuses and set(statuses) == {"stopped"}
    assert not any(_alive(pid) for pid in pids + children)
