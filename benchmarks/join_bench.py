"""Benchmarks on the integration harness (not a test; needs root like tests/integration).

1. Time from cp1 ready (kubeadm init done) to 3 voters with no learner:
   - lab:  the chain `lab gate --voters 1; lab join cp2; lab gate --voters 2; lab join cp3;
           lab gate --voters 3`
   - seed: benchmarks/seed_join.sh for cp2 then cp3 (join at once, on failure reset + sleep 60 s)
   each without a fault and with a 20 s partition of cp2 (DROP on 2380) from the start of its
   first attempt.
2. `lab diagnose` on 3 control planes against the same checks run one SSH call at a time
   (every CP -> every other CP on 2379/2380/6443, member list, endpoint status per member,
   alarms), on a healthy cluster and with cp2's peer port partitioned.

Prints each run, then the medians and the ratios. Usage (as root, from the repo root):
    /path/to/venv/bin/python -m benchmarks.join_bench [--runs 3] [--only join|diagnose]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.integration.harness import ADDRESSES, Harness, wait_until

CPS = ("cp1", "cp2", "cp3")
SEED = Path(__file__).with_name("seed_join.sh")
PARTITION_SECONDS = 20.0
# The project's retry knobs, scaled for a harness whose joins take seconds, not minutes; the
# gate's as a user's config leaves them (the integration tier shortens them): timed from the
# host, whose domain type the harness config sets to kvm.
TUNING: dict[str, float | None] = {
    "cp_join_retry_attempts": 8,
    "cp_join_retry_sleep_seconds": 2,
    "cp_join_retry_max_sleep_seconds": 10,
    "cp_join_retry_max_total_seconds": 600,
    "gate_consecutive_polls": 3,
    "gate_poll_interval_seconds": None,
    "gate_min_window_seconds": None,
}


def three_voters(lab: Harness) -> bool:
    members = lab.members()
    return len(members) == 3 and all(m.get("name") and not m.get("isLearner") for m in members)


def lab_chain(lab: Harness) -> None:
    for args in (
        ("gate", "--voters", "1"),
        ("join", "cp2"),
        ("gate", "--voters", "2"),
        ("join", "cp3"),
        ("gate", "--voters", "3"),
    ):
        if lab.lab(*args, timeout=900).returncode != 0:
            raise RuntimeError(f"lab {' '.join(args)} failed")


def seed_chain(lab: Harness) -> None:
    env = {**os.environ, "SSH": " ".join(lab.ssh_argv()), "CP1": ADDRESSES["cp1"]}
    for node in ("cp2", "cp3"):
        proc = subprocess.run(
            ["ip", "netns", "exec", lab.host.ns, "bash", str(SEED), node, ADDRESSES[node]],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        print(proc.stdout[-2000:], proc.stderr[-2000:])
        if proc.returncode != 0:
            raise RuntimeError(f"seed join of {node} failed")


def time_to_three_voters(chain: Callable[[Harness], None], partition: bool) -> float:
    with (
        tempfile.TemporaryDirectory(prefix="labbench") as tmp,
        Harness(Path(tmp), CPS, tuning=TUNING) as lab,
    ):
        lab.init("cp1")
        t0 = time.monotonic()
        lift = None
        if partition:
            lab.nodes["cp2"].block_port(2380)
            lift = threading.Timer(PARTITION_SECONDS, lab.nodes["cp2"].unblock_port, (2380,))
            lift.start()
        try:
            chain(lab)
            wait_until(lambda: three_voters(lab), 120, "3 voters and no learner")
            return time.monotonic() - t0
        finally:
            if lift is not None:
                lift.cancel()


def diagnose_times(runs: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="labbench") as tmp,
        Harness(Path(tmp), CPS, tuning=TUNING) as lab,
    ):
        lab.init("cp1")
        lab_chain(lab)
        for fault in ("healthy", "cp2 partitioned"):
            if fault != "healthy":
                lab.nodes["cp2"].block_port(2380)
            for _ in range(runs):
                t0 = time.monotonic()
                lab.lab("diagnose", "--json", timeout=300)
                out.setdefault(f"diagnose {fault}: lab", []).append(time.monotonic() - t0)
                t0 = time.monotonic()
                sequential_checks(lab)
                out.setdefault(f"diagnose {fault}: one SSH call at a time", []).append(
                    time.monotonic() - t0
                )
    return out


def sequential_checks(lab: Harness) -> None:
    """The troubleshooting guide's diagnose script: one SSH call per check, one at a time."""
    for src in CPS:
        for dst in CPS:
            if dst != src:
                for port in (2379, 2380, 6443):
                    lab.ssh(
                        src,
                        f"timeout 2 bash -c 'echo > /dev/tcp/{ADDRESSES[dst]}/{port}'"
                        " && echo OK || echo FAIL",
                        check=False,
                    )
    tls = (
        "--cacert=/etc/kubernetes/pki/etcd/ca.crt"
        " --cert=/etc/kubernetes/pki/apiserver-etcd-client.crt"
        " --key=/etc/kubernetes/pki/apiserver-etcd-client.key"
    )
    lab.ssh(
        "cp1", f"etcdctl --endpoints=https://{ADDRESSES['cp1']}:2379 {tls} member list", check=False
    )
    for node in CPS:
        lab.ssh(
            "cp1",
            f"etcdctl --endpoints=https://{ADDRESSES[node]}:2379 {tls} endpoint status -w table",
            check=False,
        )
    lab.ssh(
        "cp1", f"etcdctl --endpoints=https://{ADDRESSES['cp1']}:2379 {tls} alarm list", check=False
    )


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--only", choices=["join", "diagnose"])
    args = p.parse_args()
    results: dict[str, list[float]] = {}
    if args.only in (None, "join"):
        for partition in (False, True):
            for name, chain in (("lab", lab_chain), ("seed", seed_chain)):
                label = f"cp1 ready -> 3 voters, {'20 s partition' if partition else 'no fault'}:"
                for i in range(args.runs):
                    took = time_to_three_voters(chain, partition)
                    print(f"{label} {name} run {i + 1}: {took:.1f}s", flush=True)
                    results.setdefault(f"{label} {name}", []).append(took)
    if args.only in (None, "diagnose"):
        for key, values in diagnose_times(args.runs).items():
            results[key] = values
    print("\nmedians (s):")
    medians = {k: statistics.median(v) for k, v in results.items()}
    for k, m in medians.items():
        print(f"  {k:<62} {m:7.1f}   runs: {', '.join(f'{x:.1f}' for x in results[k])}")
    print("\nratios:")
    for k, m in medians.items():
        for mine, other in ((": lab", ": seed"), (": lab", ": one SSH call at a time")):
            if k.endswith(mine) and k[: -len(mine)] + other in medians:
                base = medians[k[: -len(mine)] + other]
                print(
                    f"  {k[: -len(mine)]:<50} {other.strip(': ')} / lab = {base / m:5.2f}x,"
                    f" lab / {other.strip(': ')} = {m / base:5.2f}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
