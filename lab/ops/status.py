"""`lab status`: the lab on one screen. Every node (role, address, its machine's state in libvirt,
Ready, kubelet version), etcd's members (voter or learner, leader, raft term, how far each
trails the leader), which control plane holds the VIP, and one line: healthy, or what is not.
Healthy is `lab verify`'s checks and every machine running; everything is read at once.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

from lab.etcd import Status as EtcdStatus
from lab.ops.common import Session
from lab.ops.node import kubelet_versions, ready_nodes
from lab.ops.verify import Check, Observed, checks_of, observe
from lab.preflight import on_link
from lab.topology import machine_names

NOT_UP = "not up"


@dataclass(frozen=True)
class NodeRow:
    name: str
    role: str
    address: str
    machine: str  # running | shut off | ... | missing | unknown (why)
    ready: bool | None  # None: the API did not answer
    kubelet: str


@dataclass(frozen=True)
class MemberRow:
    name: str
    id: str
    role: str  # voter | learner
    leader: bool
    term: int | None
    behind: int | None  # applied entries behind the leader's
    error: str


@dataclass(frozen=True)
class LabStatus:
    up: bool  # a machine of the lab exists, or libvirt cannot say and its network is here
    nodes: list[NodeRow]
    members: list[MemberRow]
    vip_holder: str | None  # None: no VIP (mode cp1) or nobody holds it
    checks: list[Check]

    @property
    def healthy(self) -> bool:
        return self.up and not self.problems

    @property
    def problems(self) -> list[str]:
        if not self.up:
            states = {n.machine for n in self.nodes}
            return ["every machine " + states.pop()] if len(states) == 1 else [machines(self)]
        stopped = [n for n in self.nodes if not machine_ok(n.machine)]
        failed = [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]
        return ([machines(self, stopped)] if stopped else []) + failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "up": self.up,
            "problems": self.problems,
            "nodes": [asdict(n) for n in self.nodes],
            "etcd": [asdict(m) for m in self.members],
            "vip_holder": self.vip_holder,
        }


def machines(status: LabStatus, nodes: list[NodeRow] | None = None) -> str:
    return "machines: " + ", ".join(f"{n.name} {n.machine}" for n in nodes or status.nodes)


def machine_ok(state: str) -> bool:
    """Running, or unknown because libvirt cannot be asked from here (the other checks decide)."""
    return state == "running" or state.startswith("unknown")


def machine_states(uri: str, names: list[str]) -> dict[str, str]:
    """Domain name -> its state (`virsh list --all`), "missing" for none of that name."""
    if shutil.which("virsh") is None:
        return dict.fromkeys(names, "unknown (no virsh here)")
    r = subprocess.run(
        ["virsh", "-c", uri, "list", "--all"], capture_output=True, text=True, timeout=30
    )
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or ["virsh failed"])[-1]
        return dict.fromkeys(names, f"unknown ({why})")
    listed = {}
    for line in r.stdout.splitlines()[2:]:  # " Id   Name   State" and a rule, then one per domain
        parts = line.split(None, 2)
        if len(parts) == 3:
            listed[parts[1]] = parts[2].strip()
    return {n: listed.get(n, "missing") for n in names}


def member_rows(seen: Observed) -> list[MemberRow]:
    snap = seen.snap
    if snap is None:
        return []
    lead = snap.leader_status
    rows = []
    for m in snap.members:
        s = snap.statuses.get(m.id)
        ok = isinstance(s, EtcdStatus)
        rows.append(
            MemberRow(
                snap.label(m),
                m.hex_id,
                "learner" if m.is_learner else "voter",
                snap.leader is not None and snap.leader.id == m.id,
                s.raft_term if isinstance(s, EtcdStatus) else None,
                lead.applied_index - s.applied_index
                if isinstance(s, EtcdStatus) and lead
                else None,
                "" if ok else str(s or "no status"),
            )
        )
    return rows


async def lab_status(session: Session) -> LabStatus:
    cfg, nodes = session.cfg, session.topo.nodes
    names = machine_names(cfg)
    machines = await asyncio.to_thread(machine_states, cfg.libvirt.uri, list(names.values()))
    known = [s for s in machines.values() if not s.startswith("unknown")]
    # Ask the nodes only where the lab can be: a machine of it, or (libvirt not answering here)
    # its network on a link; never send to its addresses through a gateway.
    if known:
        up = any(s != "missing" for s in known)
    else:
        up = await asyncio.to_thread(on_link, str(session.topo.first.address))
    if not up:
        rows = [
            NodeRow(n.name, n.role, str(n.address), machines[names[n.name]], None, "-")
            for n in nodes
        ]
        return LabStatus(False, rows, [], None, [])
    seen = await observe(session)
    ready: dict[str, bool] = {}
    versions: dict[str, str] = {}
    if seen.nodes_json is not None:
        ready, versions = ready_nodes(seen.nodes_json), kubelet_versions(seen.nodes_json)
    rows = [
        NodeRow(
            n.name,
            n.role,
            str(n.address),
            machines[names[n.name]],
            ready.get(n.name, False) if seen.nodes_json is not None else None,
            versions.get(n.name, "-"),
        )
        for n in nodes
    ]
    holders = [e.node for e in seen.endpoints if e.holds_vip]
    checks = checks_of(session, seen)
    return LabStatus(True, rows, member_rows(seen), ",".join(holders) or None, checks)


def render(status: LabStatus, cluster: str) -> str:
    if not status.up:
        return f"lab {cluster}: {NOT_UP} ({status.problems[0]}): run `make up`"
    lines = [f"{'node':<10}{'role':<15}{'address':<15}{'machine':<12}{'ready':<7}kubelet"]
    for n in status.nodes:
        ready = "?" if n.ready is None else ("yes" if n.ready else "NO")
        lines.append(f"{n.name:<10}{n.role:<15}{n.address:<15}{n.machine:<12}{ready:<7}{n.kubelet}")
    lines.append("")
    lines.append(f"{'etcd':<10}{'id':<18}{'role':<9}{'leader':<8}{'term':<6}behind")
    for m in status.members:
        if m.error:
            lines.append(f"{m.name:<10}{m.id:<18}{m.role:<9}{'':<8}{'':<6}{m.error}")
            continue
        lead = "yes" if m.leader else ""
        lines.append(f"{m.name:<10}{m.id:<18}{m.role:<9}{lead:<8}{m.term!s:<6}{m.behind}")
    if status.vip_holder is not None:
        lines.append(f"\nVIP on {status.vip_holder}")
    verdict = "healthy" if status.healthy else "NOT healthy: " + "; ".join(status.problems)
    lines.append(f"\nlab {cluster}: {verdict}")
    return "\n".join(lines)


def to_json(status: LabStatus) -> str:
    return json.dumps(status.to_dict(), indent=2)
