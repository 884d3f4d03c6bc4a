"""`lab diagnose`: why a join fails, in seconds. Every control plane probes every other on
2379/2380/6443 (all nodes and paths at once), then the member list, an endpoint status table,
stale learners, who holds the control-plane VIP, and a recommendation that names the most likely
root cause.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from lab.etcd import PEER_PORT, EtcdError, Status
from lab.ops.cleanup import Stale, joining, stale_learners
from lab.ops.common import OpFailed, Session, Snapshot
from lab.ops.endpoint import EndpointState, endpoint_states
from lab.ops.node import TcpPath, probe

PORTS = (2379, 2380, 6443)


@dataclass(frozen=True)
class Recommendation:
    cause: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"cause": self.cause, "detail": self.detail}


@dataclass
class Report:
    connectivity: list[TcpPath]
    snapshot: Snapshot
    stale: list[Stale]
    recommendation: Recommendation
    endpoint: list[EndpointState]  # empty unless the endpoint is a VIP

    def to_dict(self) -> dict[str, Any]:
        snap = self.snapshot
        label = snap.label
        status = []
        for m in snap.members:
            s = snap.statuses.get(m.id)
            row: dict[str, Any] = {"name": label(m), "id": m.hex_id}
            row |= s.to_dict() if isinstance(s, Status) else {"error": s or "no status"}
            status.append(row)
        return {
            "connectivity": [p.to_dict() for p in self.connectivity],
            "members": [m.to_dict() | {"name": label(m)} for m in snap.members],
            "status": status,
            "alarms": [{"member_id": f"{a.member_id:x}", "alarm": a.alarm} for a in snap.alarms],
            "etcd_error": snap.read_error,
            "stale_learners": [s.to_dict() for s in self.stale],
            "endpoint": [e.to_dict() for e in self.endpoint],
            "recommendation": self.recommendation.to_dict(),
        }


def recommend(paths: list[TcpPath], snap: Snapshot, stale: list[Stale]) -> Recommendation:
    """The most likely root cause, in the order a person would check it."""
    no_ssh = sorted({p.source for p in paths if p.error.startswith("ssh")})
    if no_ssh:
        first = next(p.error for p in paths if p.source == no_ssh[0] and p.error.startswith("ssh"))
        return Recommendation(
            f"{', '.join(no_ssh)} unreachable over SSH",
            f"{first}; start the VM or check its network, then run diagnose again",
        )
    members = {snap.label(m): m for m in snap.members}
    voters = {snap.label(m) for m in snap.voters}

    def weight(p: TcpPath) -> tuple[int, str]:
        # A node outside the voters reaching for a voter (the joiner's path) is the likeliest cause.
        return ((p.source in voters) * 2 + (p.target not in voters), p.name)

    peer = sorted((p for p in paths if p.port == PEER_PORT and p.blocked), key=weight)
    if peer:
        names = ", ".join(p.name for p in peer)
        return Recommendation(
            f"network: {names} blocked ({peer[0].error})",
            "etcd peer traffic (2380) does not get through, so a learner cannot catch up and the"
            " promote fails ('can only promote a learner member which is in sync with leader')."
            " Check the firewall (iptables -L) on both ends and the libvirt network; then"
            " `lab cleanup-learners` and `lab join` again.",
        )
    if snap.list_error and not snap.members:
        return Recommendation("etcd does not answer", f"member list failed: {snap.list_error}")
    dead = [n for n, m in members.items() if m.started and snap.status(m) is None]
    if dead:
        why = snap.statuses.get(members[dead[0]].id)
        return Recommendation(
            f"etcd on {', '.join(dead)} does not answer",
            f"{why}; check the etcd static pod / kubelet on that node",
        )
    if snap.read_error:
        return Recommendation(
            "etcd has no quorum or no leader", f"a linearizable read failed: {snap.read_error}"
        )
    if snap.alarms:
        kinds = ", ".join(sorted({a.alarm for a in snap.alarms}))
        return Recommendation(
            f"etcd alarm raised: {kinds}",
            "NOSPACE: compact and defragment, then `etcdctl alarm disarm`;"
            " CORRUPT: restore the member from a healthy one",
        )
    if stale:
        s = stale[0]
        return Recommendation(
            f"stale learner {s.label} blocks joins",
            f"{s.reason}; run `lab cleanup-learners` (it never removes a voter)",
        )
    other = sorted((p for p in paths if p.blocked), key=weight)
    if other:
        return Recommendation(
            f"network: {', '.join(p.name for p in other)} blocked",
            "clients (2379) or the API server (6443) cannot be reached on that path",
        )
    learners = [snap.label(m) for m in snap.learners]
    if learners:
        return Recommendation(
            f"learner {', '.join(learners)} still catching up",
            "a join is in progress or stuck; watch `lab diagnose` again",
        )
    return Recommendation(
        "no problem found",
        f"{len(voters)} voter(s), no learner, every path between control planes is open",
    )


async def diagnose(session: Session) -> Report:
    cps = session.topo.control_planes
    session.say(
        None,
        f"probing {len(PORTS)} ports between {len(cps)} control planes, from every node at once",
    )
    targets = {
        src.name: [(d.name, str(d.address), p) for d in cps if d != src for p in PORTS]
        for src in cps
    }

    async def etcd_snapshot() -> Snapshot:
        try:
            return await session.snapshot()
        except (OpFailed, EtcdError) as e:
            return Snapshot([], {}, [], str(e), str(e), session.topo.nodes)

    async def endpoint() -> list[EndpointState]:
        return await endpoint_states(session) if session.cfg.serves_vip else []

    snap, probes, vip = await asyncio.gather(
        etcd_snapshot(),
        asyncio.gather(*(probe(session, src, targets[src.name]) for src in cps)),
        endpoint(),
    )
    paths = [p for ps in probes for p in ps]
    session.say(None, f"etcd: {len(snap.voters)} voter(s), {len(snap.learners)} learner(s)")
    busy = await joining(session, snap)
    stale = stale_learners(
        [snap], node=None, max_lag=session.cfg.tuning.gate_max_applied_lag, joining=busy
    )
    return Report(paths, snap, stale, recommend(paths, snap, stale), vip)


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n //= 1024
    return f"{n} TB"


def render(report: Report) -> str:
    lines = [
        "connectivity (row -> column:port; ok, refused = reachable but closed, TIMEOUT = blocked):"
    ]
    cols = sorted({(p.target, p.port) for p in report.connectivity})
    header = "".join(f"{t}:{port:<10}"[:14].ljust(14) for t, port in cols)
    lines.append(" " * 10 + header)
    for src in sorted({p.source for p in report.connectivity}):
        cells = {(p.target, p.port): p for p in report.connectivity if p.source == src}
        row = ""
        for c in cols:
            p = cells.get(c)
            cell = (
                "-"
                if p is None
                else "ok"
                if p.ok
                else (
                    "refused"
                    if "refused" in p.error.lower()
                    else "ssh?"
                    if p.error.startswith("ssh")
                    else p.error.upper()[:12]
                )
            )
            row += cell.ljust(14)
        lines.append(f"  {src:<8}{row}")
    snap = report.snapshot
    label = snap.label
    lines.append("")
    lines.append("members:")
    if snap.list_error and not snap.members:
        lines.append(f"  member list failed: {snap.list_error}")
    for m in snap.members:
        lines.append(
            f"  {m.hex_id:<17} {label(m):<22} {', '.join(m.peer_urls):<28}"
            f" {'learner' if m.is_learner else 'voter'}"
            f"{'' if m.started else ', not started'}"
        )
    lines.append("")
    lines.append("endpoint status:")
    lines.append(
        f"  {'name':<10}{'endpoint':<22}{'leader':<8}{'term':>6}{'index':>10}"
        f"{'applied':>10}{'db size':>10}  learner  errors"
    )
    for m in snap.members:
        s = snap.statuses.get(m.id)
        if isinstance(s, Status):
            lines.append(
                f"  {label(m):<10}{s.endpoint:<22}{'yes' if s.leader == s.member_id else 'no':<8}"
                f"{s.raft_term:>6}{s.raft_index:>10}{s.applied_index:>10}{_size(s.db_size):>10}"
                f"  {'yes' if s.is_learner else 'no':<8} {'; '.join(s.errors) or '-'}"
            )
        else:
            lines.append(f"  {label(m):<10}  {s or 'no status'}")
    for a in snap.alarms:
        lines.append(f"  alarm {a.alarm} on member {a.member_id:x}")
    if snap.read_error:
        lines.append(f"  linearizable read failed: {snap.read_error}")
    lines.append("")
    lines.append(
        "stale learners: " + (", ".join(f"{s.label} ({s.reason})" for s in report.stale) or "none")
    )
    if report.endpoint:
        lines.append("")
        lines.append("control-plane VIP (keepalived, haproxy):")
        for e in report.endpoint:
            services = ", ".join(f"{k} {v}" for k, v in e.services.items())
            lines.append(f"  {e.node:<10}{'holds the VIP' if e.holds_vip else '-':<15}{services}")
    lines.append("")
    lines.append(f"recommendation: {report.recommendation.cause}")
    lines.append(f"  {report.recommendation.detail}")
    return "\n".join(lines)
