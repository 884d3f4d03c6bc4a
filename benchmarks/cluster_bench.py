"""The real cluster's figures (`make bench-cluster`: root, the node image, two hours or more here).

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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lab.config import LabConfig, load_config
from lab.etcd import EtcdError
from lab.libvirtd import PrivateLibvirtd
from lab.ops.common import OpFailed, Progress, Session, owns
from lab.ops.node import fetch_credentials, kubeadm_join, kubeadm_reset, write_join_config
from lab.preflight import on_link
from lab.ssh import SshError
from lab.topology import Node, build_topology
from tests.e2e.cluster import ROOT, UP_TIMEOUT, UPGRADE_TO, Cluster, cluster_on
from tests.engine.conftest import Libvirtd

CIDR = "10.42.0.0/24"
JOINERS = ("cp2", "cp3")
SEED_ATTEMPTS, SEED_SLEEP = 5, 60
PROMOTE_REFUSED = "can only promote a learner member"
FAILED = "seed: failed: "


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


def seed_way_in_namespace(
    netns: str, config: Path, budget: float, sleep: float = SEED_SLEEP
) -> list[str]:
    """The seed's way, run by a child of this in the lab's network namespace: the guests'
    addresses exist only there (from here they would leave the host by its default route).
    Its lines are printed as they come; returns its failed attempts."""
    argv = [sys.executable, "-u", "-m", "benchmarks.cluster_bench", "seed", str(config)]
    child = subprocess.Popen(
        ["ip", "netns", "exec", netns, *argv, str(budget), str(sleep)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert child.stdout is not None
    failures = []
    for line in child.stdout:
        print(line, end="", flush=True)
        if line.startswith(FAILED):
            failures.append(line.removeprefix(FAILED).rstrip())
    if child.wait() != 0:
        raise RuntimeError(f"the seed's way ended with exit {child.returncode}")
    return failures


async def seed_way(cfg: LabConfig, budget: float, sleep: float) -> None:
    """Both joins at once, each the guide's loop (SLEEP between attempts: 60 s in the guide);
    prints one FAILED line per failed attempt."""
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
                    why = await left_a_learner(session, node) + (
                        "promote refused; " if PROMOTE_REFUSED in str(e) else ""
                    )
                    failure = f"{name} attempt {attempt}: {why}{str(e).splitlines()[0]}"
                    print(f"{FAILED}{failure}", flush=True)
                    try:
                        await kubeadm_reset(session, node)
                    except (OpFailed, SshError) as reset_error:  # the guide goes on regardless
                        print(f"seed: {name}: reset failed: {reset_error}", flush=True)
                    if time.monotonic() + sleep > deadline:
                        break
                    await asyncio.sleep(sleep)
            print(f"seed: {name} did not join", flush=True)

        await asyncio.gather(*(one(n) for n in JOINERS))


async def left_a_learner(session: Session, node: Node) -> str:
    """'left a learner; ' when etcd lists one of the node's, '' when not, or why etcd cannot say."""
    try:
        members = (await session.snapshot()).members
    except (OpFailed, EtcdError) as e:
        return f"etcd unreadable ({e}); "
    return "left a learner; " if any(m.is_learner and owns(node, m) for m in members) else ""


def main(args: list[str]) -> int:
    if args[:1] == ["seed"]:  # the child of seed_way_in_namespace
        cfg = load_config(Path(args[1]))
        cp1 = build_topology(cfg).first.address
        if not on_link(str(cp1)):
            print(f"seed: {cp1} is not on a link here: run in the lab's namespace", file=sys.stderr)
            return 2
        asyncio.run(seed_way(cfg, float(args[2]), float(args[3])))
        return 0
    with tempfile.TemporaryDirectory(prefix="labbench") as tmp:
        daemon = PrivateLibvirtd(Path(tmp) / "daemon", f"labbench{os.getpid()}")
        daemon.start()
        try:
            libvirtd = Libvirtd(daemon.netns, daemon.uri, Path(tmp))
            with cluster_on(libvirtd, Path(tmp) / "cluster", CIDR, 3, 1, UPGRADE_TO) as c:
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
                        failures = seed_way_in_namespace(c.libvirtd.netns, c.config, budget)
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
    raise SystemExit(main(sys.argv[1:]))
