"""The real cluster's figures (`make bench-cluster`: root, the node image, about two hours here).

1. `pulumi up` of 3 control planes + 1 worker on the node image, every guest emulated: each step
   from Pulumi's event log, the floor (cp1's boot + `kubeadm init` + each bare `kubeadm join`:
   what no ordering saves) and the gates' share.
2. On the same guests, cp2 and cp3 taken out again (`lab leave`) and joined back two ways, each
   timed from 1 voter to 3 voters and no learner:
   - lab: `lab join cp2; lab gate --voters 2; lab join cp3; lab gate --voters 3`
   - seed: the troubleshooting guide's strategy: cp2 and cp3 at once; on a failure
     `kubeadm reset -f`, sleep 60 s, join again, up to 5 attempts; no preflight, gate or learner
     cleanup. It runs the lab's own kubeadm configuration (fresh credentials, the emulated
     timeouts and probes), so only the strategy differs; its budget is the lab's retry budget.
     Failed attempts are counted, and those that left a learner or met etcd's "can only promote
     a learner member" named.

Prints the step table, then both ways' times and the seed's failures. Figures, not pass/fail.
Usage (as root, from the repo root): .venv/bin/python -m benchmarks.cluster_bench
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from lab.config import load_config
from lab.libvirtd import PrivateLibvirtd
from lab.ops.common import OpFailed, Progress, Session, owns
from lab.ops.node import fetch_credentials, kubeadm_join, kubeadm_reset, write_join_config
from lab.ssh import SshError
from tests.e2e.cluster import UP_TIMEOUT, Cluster, cluster_on
from tests.engine.conftest import Libvirtd

CIDR = "10.42.0.0/24"
JOINERS = ("cp2", "cp3")
SEED_ATTEMPTS, SEED_SLEEP = 5, 60
PROMOTE_REFUSED = "can only promote a learner member"


def lab_way(c: Cluster) -> None:
    """Each step with as long as a whole `pulumi up` may take (a cp3 join here took 17 min)."""
    for args in (
        ("join", "cp2"),
        ("gate", "--voters", "2"),
        ("join", "cp3"),
        ("gate", "--voters", "3"),
    ):
        began = time.monotonic()
        c.lab(*args, timeout=UP_TIMEOUT)
        print(f"lab: {' '.join(args)}: {time.monotonic() - began:.0f} s", flush=True)


async def seed_way(c: Cluster, budget: float) -> list[str]:
    """Both joins at once, each the guide's loop; returns one line per failed attempt."""
    cfg = load_config(c.config)
    failures: list[str] = []
    deadline = time.monotonic() + budget
    async with Session(cfg, Progress()) as session:

        async def one(name: str) -> None:
            node, cp1 = session.topo.node(name), session.topo.node("cp1")
            for attempt in range(1, SEED_ATTEMPTS + 1):
                try:
                    creds = await fetch_credentials(session, cp1, control_plane=True)
                    await write_join_config(session, node, creds)
                    await kubeadm_join(session, node, timeout=max(deadline - time.monotonic(), 1))
                    print(f"seed: {name} joined on attempt {attempt}", flush=True)
                    return
                except (OpFailed, SshError) as e:
                    members = (await session.snapshot()).members
                    learner = any(m.is_learner and owns(node, m) for m in members)
                    why = ("left a learner; " if learner else "") + (
                        "promote refused; " if PROMOTE_REFUSED in str(e) else ""
                    )
                    failures.append(f"{name} attempt {attempt}: {why}{str(e).splitlines()[0]}")
                    print(f"seed: {failures[-1]}", flush=True)
                    await kubeadm_reset(session, node)
                    if time.monotonic() + SEED_SLEEP > deadline:
                        break
                    await asyncio.sleep(SEED_SLEEP)
            print(f"seed: {name} did not join", flush=True)

        await asyncio.gather(*(one(n) for n in JOINERS))
    return failures


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="labbench") as tmp:
        daemon = PrivateLibvirtd(Path(tmp) / "daemon", f"labbench{os.getpid()}")
        daemon.start()
        try:
            libvirtd = Libvirtd(daemon.netns, daemon.uri, Path(tmp))
            with cluster_on(libvirtd, Path(tmp) / "cluster", CIDR, 3, 1) as c:
                table = dict(c.up_with_table("up"))
                gates = sum(s for label, s in table.items() if label.endswith("-gate"))
                total = table["total (pulumi up)"]
                print(f"gates: {gates:.0f} s of {total:.0f} s ({100 * gates / total:.1f} %)")

                times = {}
                for way in ("lab", "seed"):
                    for name in reversed(JOINERS):
                        c.lab("leave", name)
                    began = time.monotonic()
                    failures = []
                    if way == "lab":
                        lab_way(c)
                    else:
                        budget = load_config(c.config).tuning.cp_join_retry_max_total_seconds
                        failures = asyncio.run(seed_way(c, budget))
                    times[way] = time.monotonic() - began
                    voters, learners = c.voters_and_learners()
                    print(f"{way}: {times[way]:.0f} s; voters {voters}, learners {learners}")
                    for line in failures:
                        print(f"  failed: {line}")
                print(f"seed / lab = {times['seed'] / times['lab']:.2f}")
        finally:
            daemon.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
