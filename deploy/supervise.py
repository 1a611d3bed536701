"""What the workers' leader keeps true between cycles: every alias's serving versions run on live vLLM
servers, and what cycles whose process died left behind is cleaned up.

Supervision only starts a server for a production or canary version (of every alias in the registry) that
has no active deployment at all (none running, none draining): it never touches a deployment another step is
moving (a promotion drains the old production; a version that is needed again is undrained by the canary step
itself, never from here), and the launcher starts one version at a time. Servers of other machines are left
to those machines: a dead one is marked failed by the health check and restarted by whoever serves the
version again.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Engine

from deploy.cycle import LEASE_NAME, Cleanup, abandon_dead_runs, make_holder
from deploy.cycle_runs import acquire_lease, release_lease, unfinished_runs
from deploy.deployments import DeploymentError, active_deployment
from deploy.launcher import Launcher
from registry import store

log = logging.getLogger("tuneloop.worker")


def supervise(launcher: Launcher) -> dict[str, Any]:
    """Mark dead servers failed (re-loading the adapters a restarted host lost), then start a server for each
    production or canary version of every alias in the registry that has none. Returns what it found and did."""
    alive = launcher.check()
    started: list[str] = []
    failed: dict[str, str] = {}
    for alias in [state.alias for state in store.list_aliases(launcher.engine)]:
        for version_id in _serving(launcher.engine, alias):
            # read again just before acting: a promotion or rollback may have moved the pointers meanwhile
            if version_id not in _serving(launcher.engine, alias) or active_deployment(launcher.engine, version_id):
                continue
            launcher.stop_strays(version_id)  # one a killed worker was still starting: never two servers
            try:
                deployment = launcher.ensure(version_id)
            except DeploymentError as exc:  # recorded and retried at the next round; the others go on
                failed[version_id] = str(exc)
                log.error("supervision could not serve %s: %s", version_id, exc)
                continue
            if version_id not in _serving(launcher.engine, alias):  # it left traffic while its server started
                launcher.drain(version_id, "no longer serving its alias")
                continue
            started.append(version_id)
            log.info("supervision started %s at %s", version_id, deployment.base_url)
    return {"alive": [d.served_name for d in alive], "started": started, "failed": failed}


def _serving(engine: Engine, alias: str) -> list[str]:
    production, canary, _weight = store.get_aliases(engine, alias)
    return [version_id for version_id in (production, canary) if version_id is not None]


def recover_cycles(engine: Engine, cleanup: Cleanup, lease_ttl_s: float) -> dict[str, Any]:
    """Mark the cycles whose process died abandoned and undo their half-done work, under the cycle lease (a
    cycle that is really running holds it: nothing is touched then). Called at every supervision round until
    it has nothing to do: a dead cycle's lease may outlive the leader's by minutes (another machine's)."""
    if not unfinished_runs(engine, None):
        return {"abandoned": []}
    holder = make_holder()
    if not acquire_lease(engine, LEASE_NAME, holder, lease_ttl_s):
        return {"skipped": "a cycle holds the lease"}
    try:
        abandoned = abandon_dead_runs(engine, None, cleanup)
    finally:
        release_lease(engine, LEASE_NAME, holder)
    if abandoned:
        log.info("cleaned up dead cycle run(s) %s", ", ".join(map(str, abandoned)))
    return {"abandoned": abandoned}
