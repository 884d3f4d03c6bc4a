"""`lab verify`: is the cluster done? Every member started, no learner, the expected number of
voters, every endpoint healthy, every node of the config Ready (kubectl on cp1, or the next
control plane up), and (mode vip) the VIP on exactly one control plane.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from lab.etcd import EtcdError
from lab.ops.common import OpFailed, Session, Snapshot
from lab.ops.endpoint import EndpointState, endpoint_states
from lab.ops.gate import gate
from lab.ops.node import KUBECONFIG, admin_node, kube_nodes_json, kubelet_versions, ready_nodes
from lab.ssh import SshError


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.name, "ok": self.ok, "detail": self.detail}


def etcd_checks(snap: Snapshot, voters: int) -> list[Check]:
    if snap.list_error and not snap.members:
        return [Check("etcd members", False, f"member list failed: {snap.list_error}")]
    label = snap.label
    names = ", ".join(label(m) for m in snap.voters) or "none"
    not_started = [label(m) for m in snap.members if not m.started]
    unhealthy = [label(m) for m in snap.members if m.started and not snap.healthy(m)]
    return [
        Check("members started", not not_started, ", ".join(not_started) or "all started"),
        Check(
            "no learner",
            not snap.learners,
            ", ".join(label(m) for m in snap.learners) or "no learner",
        ),
        Check(
            "expected voters",
            len(snap.voters) == voters,
            f"{len(snap.voters)} of {voters}: {names}",
        ),
        Check(
            "endpoints healthy",
            not unhealthy and not snap.read_error,
            ", ".join(unhealthy) or snap.read_error or "every endpoint answers",
        ),
    ]


def node_checks(ready: dict[str, bool], expected: list[str]) -> list[Check]:
    missing = [n for n in expected if n not in ready]
    not_ready = [n for n in expected if n in ready and not ready[n]]
    detail = (
        "; ".join(
            filter(
                None,
                [
                    "missing: " + ", ".join(missing) if missing else "",
                    "not Ready: " + ", ".join(not_ready) if not_ready else "",
                ],
            )
        )
        or f"{len(expected)} node(s) Ready"
    )
    return [Check("nodes Ready", not missing and not not_ready, detail)]


def version_check(versions: dict[str, str], version: str) -> Check:
    """Every node's kubelet at kubernetes.version: after an upgrade, that it reached them all."""
    behind = [f"{n} at {v}" for n, v in sorted(versions.items()) if v != f"v{version}"]
    detail = f"want v{version}: " + ", ".join(behind) if behind else f"every node at v{version}"
    return Check("kubelet versions", not behind, detail)


def vip_check(states: list[EndpointState]) -> Check:
    """One holder, and its keepalived and haproxy active: two would be a split (VRRP adverts
    lost between them), none an endpoint nobody answers."""
    holders = [s for s in states if s.holds_vip]
    down = [f"{s.node} {k} {v}" for s in holders for k, v in s.services.items() if v != "active"]
    if len(holders) == 1 and not down:
        return Check("endpoint VIP", True, f"on {holders[0].node}")
    if not holders:
        return Check("endpoint VIP", False, "no control plane holds it")
    detail = "held by " + ", ".join(s.node for s in holders)
    return Check("endpoint VIP", False, "; ".join([detail, *down]))


@dataclass
class Observed:
    """One look at the lab, each part read at once: etcd, the API's nodes, the endpoint; a part
    that could not be read says why instead."""

    snap: Snapshot | None
    etcd_error: str
    nodes_json: str | None
    nodes_error: str
    endpoints: list[EndpointState]


async def observe(session: Session) -> Observed:
    async def etcd() -> tuple[Snapshot | None, str]:
        try:
            return await session.snapshot(), ""
        except (OpFailed, EtcdError) as e:
            return None, str(e)

    async def nodes() -> tuple[str | None, str]:
        try:
            return await kube_nodes_json(session), ""
        except (OpFailed, SshError) as e:
            return None, str(e)

    async def endpoint() -> list[EndpointState]:
        return await endpoint_states(session) if session.cfg.serves_vip else []

    (snap, etcd_error), (listed, nodes_error), endpoints = await asyncio.gather(
        etcd(), nodes(), endpoint()
    )
    return Observed(snap, etcd_error, listed, nodes_error, endpoints)


def checks_of(session: Session, seen: Observed) -> list[Check]:
    if seen.snap is None:
        checks = [Check("etcd members", False, seen.etcd_error)]
    else:
        checks = etcd_checks(seen.snap, len(session.topo.control_planes))
    if seen.nodes_json is None:
        checks.append(Check("nodes Ready", False, seen.nodes_error))
    else:
        try:
            ready, versions = ready_nodes(seen.nodes_json), kubelet_versions(seen.nodes_json)
            checks += node_checks(ready, [n.name for n in session.topo.nodes])
            checks.append(version_check(versions, session.cfg.kubernetes.version))
        except OpFailed as e:
            checks.append(Check("nodes Ready", False, str(e)))
    if session.cfg.serves_vip:
        checks.append(vip_check(seen.endpoints))
    return checks


async def checks_now(session: Session) -> list[Check]:
    return checks_of(session, await observe(session))


async def until_next_poll(session: Session, failing: list[str], deadline: float) -> None:
    """Only nodes NotReady (a CNI pod starting): kubectl's watch returns as they become Ready.
    Else one stable window: each poll runs kubectl on a control plane, dear to an emulated one."""
    began = time.monotonic()
    if failing != ["nodes Ready"]:
        await asyncio.sleep(session.gate_window)
        return
    left = max(1.0, deadline - time.monotonic())
    command = f"kubectl --kubeconfig {KUBECONFIG} wait --for=condition=Ready node --all"
    try:
        admin = await admin_node(session)
        await session.shell(admin).run(f"{command} --timeout={left:.0f}s", timeout=left + 30)
    except (OpFailed, SshError):
        pass  # the next poll says what is wrong
    # A node not registered yet: kubectl waits for those it lists, so it may return at once.
    await asyncio.sleep(max(0.0, session.poll_interval - (time.monotonic() - began)))


async def verify(session: Session, wait: float = 0) -> list[Check]:
    """The checks once, or (wait > 0) polled until all pass or `wait` seconds are spent: right
    after a join a node stays NotReady until its CNI pod runs, so the chain's verify waits."""
    deadline = time.monotonic() + wait
    failing: list[str] = []
    while True:
        checks = await checks_now(session)
        now_failing = [c.name for c in checks if not c.ok]
        if not now_failing or time.monotonic() >= deadline:
            break
        if now_failing != failing:
            session.say(None, f"waiting (up to {wait:.0f}s) for: {', '.join(now_failing)}")
            failing = now_failing
        await until_next_poll(session, now_failing, deadline)
    for c in checks:
        session.say(None, f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}")
    return checks


async def settled(session: Session, voters: int) -> str | None:
    """The gate on `voters`, then the checks polled until they pass (a restore's and a drill's
    recovery): None, or what did not hold."""
    result = await gate(session, voters)
    if not result.ok:
        return "etcd is not stable: " + "; ".join(map(str, result.violations))
    checks = await verify(session, session.cfg.tuning.cp_stabilize_timeout_seconds)
    return "; ".join(f"{c.name}: {c.detail}" for c in checks if not c.ok) or None
