"""What both e2e clusters share: the stack on the node image, `lab` run in the lab's namespace,
and the step table read from Pulumi's event log."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab import releases

from .conftest import Libvirtd, Stack

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / ".venv" / "bin" / "lab"
# A guard against a hang, not a speed target: the lab's own limits end a join that is stuck.
# The 1 + 1 up takes 3-12 min under emulation; the 3 + 1 one 15-61 min, and HA run 27's was
# still joining cp3 (its API server's 13th start) when 90 min stopped it (docs/ha-runs.md).
UP_TIMEOUT = 5400
HA_UP_TIMEOUT = 3 * 3600
API_RESTART = 300
# What kubectl says when the API server is restarting, or too loaded to finish a request within
# its 60 s, or (EOF from haproxy at the VIP) taken out by haproxy's health check: every command
# the cases run through `Cluster.lab` is safe to repeat.
API_UNAVAILABLE = (
    "was refused",
    "connection refused",
    "TLS handshake timeout",
    "unable to return",
    "request did not complete within requested timeout",
    "Unable to connect to the server: EOF",
)


@dataclass
class Cluster:
    stack: Stack
    libvirtd: Libvirtd
    config: Path
    tmp: Path
    name: str
    up_timeout: int

    def lab(
        self,
        command: str,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        """`lab COMMAND --config ... ARGS` inside the lab's namespace, each run given `timeout`
        seconds. An API server that is restarting or overloaded (emulated guests are slow) gets
        up to API_RESTART seconds; each wait is printed, so the log shows how often it happened."""
        deadline = time.monotonic() + API_RESTART
        while True:
            out = subprocess.run(
                self.lab_argv(command, *args),
                input=input or "",
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            unavailable = any(s in out.stderr for s in API_UNAVAILABLE)
            if out.returncode == 0 or not unavailable or time.monotonic() > deadline:
                break
            reason = out.stderr.strip().splitlines()[-1]
            print(f"lab {command} {' '.join(args)}: API server unavailable ({reason}); waiting")
            time.sleep(10)
        if check:
            assert out.returncode == 0, f"lab {command} {args}: {out.stderr}{out.stdout}"
        return out

    def lab_argv(self, command: str, *args: str) -> list[str]:
        """`lab COMMAND --config ... ARGS` inside the lab's namespace."""
        netns = ["ip", "netns", "exec", self.libvirtd.netns]
        return [*netns, str(LAB), command, "--config", str(self.config), *args]

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.lab("kubectl", *args, "-o", "json").stdout)

    def on(self, node: str, *command: str) -> str:
        return self.lab("ssh", node, "--", *command).stdout.strip()

    def up(self, log: Path) -> subprocess.CompletedProcess[str]:
        """`pulumi up` with its event log at `log`; the caller checks the exit code."""
        argv = ("up", "--yes", "--skip-preview", "--event-log", str(log))
        return self.stack.pulumi(*argv, timeout=self.up_timeout, check=False)

    def up_with_table(self, name: str) -> list[tuple[str, float]]:
        """`pulumi up`, which must succeed; prints and returns its step table."""
        log = self.tmp / f"events-{name}.jsonl"
        began = time.monotonic()
        out = self.up(log)
        assert out.returncode == 0, out.stdout + out.stderr
        table = step_table(log)
        print(f"\npulumi up: {time.monotonic() - began:.0f} s wall\n{'step':<40}{'seconds':>8}")
        for label, seconds in table:
            print(f"{label:<40}{seconds:>8.0f}")
        total, floor = dict(table).get("total (pulumi up)"), table[-1][1]
        if total and table[-1][0].startswith("floor"):
            print(f"{'pulumi up / floor':<40}{total / floor:>8.2f}")
        return table

    def assert_second_up_changes_nothing(self) -> None:
        out = self.stack.pulumi("up", "--yes", "--expect-no-changes", check=False, timeout=1800)
        assert out.returncode == 0, out.stdout + out.stderr

    def assert_destroy_leaves_nothing(self) -> None:
        """No domain, volume, network or pool of this cluster's is left."""
        out = self.stack.pulumi("destroy", "--yes", "--skip-preview", check=False, timeout=1800)
        assert out.returncode == 0, out.stdout + out.stderr
        virsh = self.libvirtd.virsh
        assert self.name not in virsh("list", "--all", "--name")
        assert self.name not in virsh("net-list", "--all", "--name")
        assert self.name not in virsh("pool-list", "--all", "--name")
        pool = self.tmp / "pool"
        assert not pool.exists() or not list(pool.iterdir())

    def diagnosis(self) -> dict[str, Any]:
        """`lab diagnose --json`; it exits non-zero on a problem, which callers may expect."""
        return json.loads(self.lab("diagnose", "--json", check=False).stdout)

    def voters_and_learners(self) -> tuple[list[str], list[str]]:
        members = self.diagnosis()["members"]
        return (
            sorted(m["name"] for m in members if not m["is_learner"]),
            sorted(m["name"] for m in members if m["is_learner"]),
        )

    def ready_nodes(self) -> dict[str, bool]:
        return {
            n["metadata"]["name"]: any(
                c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"]
            )
            for n in self.kubectl_json("get", "nodes")["items"]
        }

    def edit_config(self, **sections: dict[str, Any]) -> None:
        """Set keys of cluster.yaml's sections (the file `lab` reads at every step)."""
        data = yaml.safe_load(self.config.read_text())
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        self.config.write_text(yaml.safe_dump(data))


def image_of(version: str) -> Path:
    """The node image `make image VERSION=...` built for `version`; the tier fails without it."""
    image = ROOT / releases.image_path(version)
    if not image.is_file():
        pytest.fail(f"the node image {image} is missing: run `make image VERSION={version}`")
    return image


def manifest_of(version: str) -> dict[str, Any]:
    """What the image of `version` holds (image/build.sh's manifest beside it)."""
    manifest: dict[str, Any] = json.loads(image_of(version).with_suffix(".json").read_text())
    return manifest


# The e2e tiers make their cluster of this release and upgrade it in place to the newest.
UPGRADE_TO = releases.newest()


def upgrade_from() -> str:
    """The release the Makefile's e2e targets build the cluster of (LAB_UPGRADE_FROM)."""
    version = os.environ.get("LAB_UPGRADE_FROM")
    if not version:
        pytest.fail("LAB_UPGRADE_FROM is not set: run the tier with `make test-e2e` (or e2e-ha)")
    return version


@contextmanager
def cluster_on(
    libvirtd: Libvirtd, tmp: Path, cidr: str, control_planes: int, workers: int, version: str
) -> Iterator[Cluster]:
    """A cluster's stack on the node image of `version`, every guest emulated; destroyed
    afterwards."""
    image = image_of(version)
    name = f"e2e{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "cluster.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "cluster": {"name": name},
                "network": {"name": name, "cidr": cidr},
                "control_plane": {
                    "count": control_planes,
                    "cpus": 2,
                    "memory_mib": 3072,
                    "disk_gib": 10,
                },
                "workers": {"count": workers, "cpus": 1, "memory_mib": 2048, "disk_gib": 10},
                "image": {"source": str(image)},
                "kubernetes": {"version": version},
                "libvirt": {
                    "uri": libvirtd.uri,
                    "pool": name,
                    "pool_path": str(tmp / "pool"),
                    "domain_type": "qemu",
                },
                "state_dir": str(tmp / "state"),
            }
        )
    )
    stack = Stack.create("e2e", {"lab:config": str(config)}, netns=libvirtd.netns)
    try:
        up_timeout = UP_TIMEOUT if control_planes == 1 else HA_UP_TIMEOUT
        yield Cluster(stack, libvirtd, config, tmp, name, up_timeout)
    finally:
        stack.pulumi("destroy", "--yes", "--skip-preview", check=False, timeout=1800)
        stack.remove()


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


PHASES = (
    ("SSH answers and cloud-init is done", "cp1 boot to SSH + cloud-init"),
    ("kubeadm init done", "cp1 kubeadm init"),
    ("flannel applied", "flannel applied"),
)


def said(stdout: str, node: str, began: float) -> list[tuple[float, str]]:
    """(time, message) of the lines `lab` printed for `node`; `began` is when the step began."""
    return [
        (began + float(m[1]), m[2]) for m in re.finditer(rf"\[\s*([\d.]+)s\] {node}: (.+)", stdout)
    ]


def kubeadm_join_seconds(lines: list[tuple[float, str]]) -> float:
    """How long the last attempt's `kubeadm join` itself ran: from its start to the next line
    (the gate, or `joined`); the remaining phases, when they ran, count too."""
    joins = (": kubeadm join", ": kubeadm join, its etcd member watched")
    starts = [i for i, (_, m) in enumerate(lines) if m.endswith(joins)]
    assert starts, lines
    i = starts[-1]
    ends = ("gate on", "joined on")
    after = next(
        j for j in range(i + 1, len(lines)) if lines[j][1].split(": ")[-1].startswith(ends)
    )
    return lines[after][0] - lines[i][0]


def step_table(log: Path) -> list[tuple[str, float]]:
    """(step, seconds) of one `pulumi up`: Pulumi's event timestamps per resource, cp1-init split
    by the progress lines `lab init` prints, then each step of the chain as it finished (a
    join's delete is its `lab leave`). The floor is what no ordering can save: cp1's boot and
    init, plus each bare `kubeadm join`; printed for the up that created the cluster."""
    start: dict[str, float] = {}
    created: dict[str, float] = {}
    chain: list[tuple[float, str]] = []  # (when it finished, step) for the chain's commands
    stdout: dict[str, str] = {}
    first = last = None
    for e in events(log):
        first = e["timestamp"] if first is None else first
        if "resourcePreEvent" in e:
            start.setdefault(
                e["resourcePreEvent"]["metadata"]["urn"].rsplit("::", 1)[-1], e["timestamp"]
            )
        if "resOutputsEvent" not in e:
            continue
        md, last = e["resOutputsEvent"]["metadata"], e["timestamp"]
        name, op = md["urn"].rsplit("::", 1)[-1], md["op"].removesuffix("-replacement")
        if op == "create":
            created.setdefault(name, e["timestamp"])
        step = "command:local:Command" in md["urn"] and not name.endswith("-snapshots")
        if step and op in ("create", "update", "delete"):  # NODE-snapshots runs only on delete
            chain.append((e["timestamp"], f"{name} (delete)" if op == "delete" else name))
            if op != "delete":
                stdout[name] = str(md.get("new", {}).get("outputs", {}).get("stdout", ""))
    assert first is not None and last is not None
    rows = []
    if "lab-network" in created:
        rows.append(
            ("network, pool, base image", max(created["lab-network"], created["base-image"]))
        )
    # The machines defined before the chain began (workers boot after the last gate: their
    # boot is in their join's row).
    chain_began = start.get("cp1-init", float("inf"))
    if domains := [t for n, t in created.items() if n.endswith("-domain") and t <= chain_began]:
        rows.append(("machines (domains defined)", max(domains)))
    init = {}
    if "cp1-init" in stdout:
        init = {m: t for t, m in said(stdout["cp1-init"], "cp1", start["cp1-init"])}
        rows += [(label, init[message]) for message, label in PHASES]
    # In the log's order, the order they finished (its 1 s timestamps tie; sorting by name did).
    rows += [(step, at) for at, step in chain if step != "cp1-init"]
    table, before = [], first
    for label, at in rows:
        table.append((label, at - before))
        before = at
    table.append(("total (pulumi up)", last - first))
    if init:
        joins = [n.removesuffix("-join") for n in stdout if n.endswith("-join")]
        bare = sum(kubeadm_join_seconds(said(stdout[f"{n}-join"], n, 0)) for n in joins)
        floor = init["kubeadm init done"] - created["cp1-domain"] + bare
        table.append((f"floor: cp1 boot + init + {len(joins)} bare join(s)", floor))
    return table
