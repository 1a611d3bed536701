"""A cycle in its own process, for the lease and crash tests: `python -m tests.cycle_worker URL ALIAS SLEEP TTL`."""

from __future__ import annotations

import json
import sys
import time

from core.db import make_engine
from deploy.cycle import CycleContext, LeasePolicy, Step, run_cycle


def main() -> None:
    url, alias, sleep_s, ttl_s = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    engine = make_engine(url)

    def prepare(ctx: CycleContext) -> dict:
        ctx.remember(version_id=f"{alias}-v9", server_pid=12345)
        print("prepared", flush=True)
        return {"prepared": True}

    def wait(ctx: CycleContext) -> dict:
        time.sleep(sleep_s)
        return {"slept": sleep_s}

    run = run_cycle(engine, alias, [Step("prepare", prepare), Step("wait", wait)],
                    lease=LeasePolicy(ttl_s=ttl_s, heartbeat_s=ttl_s / 4))
    print(json.dumps({"id": run.id, "status": str(run.status), "reason": run.reason}), flush=True)


if __name__ == "__main__":
    main()
