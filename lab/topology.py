"""Nodes and the join plan: pure data derived from the config, shared by Pulumi and `lab`.

The plan is the safe kubeadm HA procedure written down once: cp1 init, wait for a stable etcd, then
one control plane at a time, each followed by a gate, then the workers together, then verify; and
after it the upgrade to kubernetes.version in the same order (no-ops on a cluster already there).
`lab plan` prints it and `lab.infra` turns each step into one Pulumi resource.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from lab.config import ConfigError, LabConfig

Role = Literal["control-plane", "worker"]
StepKind = Literal["init", "gate", "join", "verify", "upgrade"]
Phase = Literal["join", "upgrade"]


@dataclass(frozen=True)
class Node:
    name: str
    role: Role
    address: ipaddress.IPv4Address
    cpus: int
    memory_mib: int
    disk_gib: int

    @property
    def mac(self) -> str:
        """A stable MAC from the address, so a rebuilt VM keeps its identity on the bridge."""
        a, b, c = self.address.packed[1:]
        return f"52:54:00:{a:02x}:{b:02x}:{c:02x}"

    @property
    def is_control_plane(self) -> bool:
        return self.role == "control-plane"


def machine_name(cfg: LabConfig, node: Node) -> str:
    """The node's libvirt domain (its volumes are named after it)."""
    return f"{cfg.cluster.name}-{node.name}"


def machine_names(cfg: LabConfig) -> dict[str, str]:
    """Each node of the config -> its libvirt domain."""
    return {n.name: machine_name(cfg, n) for n in build_topology(cfg).nodes}


@dataclass(frozen=True)
class Step:
    """One step of the chain; `after` names the steps it waits for, `node` the machine it needs,
    and `boot_after` the steps that machine waits for before it boots."""

    name: str
    kind: StepKind
    after: tuple[str, ...]
    node: str | None = None
    voters: int | None = None
    boot_after: tuple[str, ...] = ()
    # upgrade: runs again whenever kubernetes.version changes (lab.infra.chain); join: once.
    phase: Phase = "join"

    @property
    def makes_machine(self) -> bool:
        """Its node's machine is made for it (init, join); an upgrade finds its node there."""
        return self.kind in ("init", "join")

    @property
    def lab_args(self) -> tuple[str, ...]:
        """The `lab` command a person would type for this step."""
        match self.kind:
            case "init":
                return ("init",)
            case "gate":  # no count: every control plane of the config
                return ("gate", *(("--voters", str(self.voters)) if self.voters else ()))
            case "join":
                return ("join", str(self.node))
            case "verify":
                return ("verify", "--wait")  # nodes are NotReady until their CNI pod runs
            case "upgrade":
                return ("upgrade", str(self.node))


@dataclass(frozen=True)
class Topology:
    nodes: tuple[Node, ...]

    @property
    def control_planes(self) -> list[Node]:
        return [n for n in self.nodes if n.is_control_plane]

    @property
    def workers(self) -> list[Node]:
        return [n for n in self.nodes if not n.is_control_plane]

    @property
    def first(self) -> Node:
        return self.control_planes[0]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        known = ", ".join(n.name for n in self.nodes)
        raise ConfigError(f"unknown node {name!r}; this config has {known}")


def build_topology(cfg: LabConfig) -> Topology:
    addresses = cfg.addresses
    cp, wk = cfg.control_plane, cfg.workers
    nodes = [
        Node(n, "control-plane", addresses[n], cp.cpus, cp.memory_mib, cp.disk_gib)
        for n in cfg.control_plane_names
    ] + [
        Node(n, "worker", addresses[n], wk.cpus, wk.memory_mib, wk.disk_gib)
        for n in cfg.worker_names
    ]
    return Topology(tuple(nodes))


def chain_plan(cfg: LabConfig) -> list[Step]:
    """The chain this config runs, for `lab plan` and the Pulumi program alike: none when
    Kubernetes is off (machines only)."""
    if not cfg.kubernetes.enabled:
        return []
    topo = build_topology(cfg)
    joins = join_plan(topo)
    return joins + upgrade_plan(topo, joins[-1].name, cfg.kubernetes.upgrade_workers_at_once)


def join_plan(topo: Topology) -> list[Step]:
    """cp1 init -> gate(1) -> cp2 join -> gate(2) -> ... -> workers in parallel -> verify."""
    first = topo.first.name
    steps = [
        Step(f"{first}-init", "init", (), first),
        Step(f"{first}-gate", "gate", (f"{first}-init",), voters=1),
    ]
    for voters, node in enumerate(topo.control_planes[1:], start=2):
        steps.append(Step(f"{node.name}-join", "join", (steps[-1].name,), node.name))
        steps.append(Step(f"{node.name}-gate", "gate", (f"{node.name}-join",), voters=voters))
    # Workers boot once the control planes are joined: under emulation a booting guest takes CPU
    # from the joins (HA run 7: cp1 booted in 292 s beside three others), and a worker has
    # nothing to do before its own join. With one control plane there is no join to spare, and
    # they boot beside cp1.
    last_gate = (steps[-1].name,)
    boot_after = last_gate if len(topo.control_planes) > 1 else ()
    workers = [
        Step(f"{w.name}-join", "join", last_gate, w.name, boot_after=boot_after)
        for w in topo.workers
    ]
    steps += workers
    steps.append(Step("verify", "verify", tuple(w.name for w in workers) or last_gate))
    return steps


def upgrade_plan(topo: Topology, after: str, workers_at_once: int) -> list[Step]:
    """kubeadm's upgrade order behind the same gates: cp1 (`kubeadm upgrade apply`) -> gate ->
    each other control plane (`kubeadm upgrade node`) -> gate -> the workers, `workers_at_once`
    at a time -> verify. On a cluster already at kubernetes.version every step is a no-op; a
    changed version runs them again, in this order (lab.infra.chain)."""
    steps: list[Step] = []
    for cp in topo.control_planes:
        steps.append(Step(f"{cp.name}-upgrade", "upgrade", (after,), cp.name, phase="upgrade"))
        after = f"{cp.name}-upgrade-gate"
        steps.append(Step(after, "gate", (steps[-1].name,), phase="upgrade"))
    batch: tuple[str, ...] = (after,)
    workers = topo.workers
    for i in range(0, len(workers), workers_at_once):
        group = [
            Step(f"{w.name}-upgrade", "upgrade", batch, w.name, phase="upgrade")
            for w in workers[i : i + workers_at_once]
        ]
        steps += group
        batch = tuple(s.name for s in group)
    steps.append(Step("upgrade-verify", "verify", batch, phase="upgrade"))
    return steps
