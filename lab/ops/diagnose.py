"""`lab diagnose`: why a join fails, in seconds. Every control plane probes every other on
2379/2380/6443 (all nodes and paths at once), then the member list, an endpoint status table,
stale learners, who holds the control-plane VIP, the nodes that are not Ready and the control
planes whose etcd does not answer (their conditions, their CNI or etcd pod, the kubelet's state
and its last different messages), and a recommendation that names the most likely root cause.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lab.etcd import PEER_PORT, EtcdError, Status
from lab.ops.cleanup import Stale, joining, stale_learners
from lab.ops.common import OpFailed, Session, Snapshot
from lab.ops.endpoint import EndpointState, endpoint_states
from lab.ops.node import TcpPath, admin_node, kube_get_json, probe
from lab.ssh import SshError

PORTS = (2379, 2380, 6443)


@dataclass(frozen=True)
class Recommendation:
    cause: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"cause": self.cause, "detail": self.detail}


@dataclass
class NodeHealth:
    """A node the API does not have Ready, or a control plane whose etcd does not answer: what
    the guide looks at for "joined but NotReady" and for an unhealthy etcd."""

    node: str
    ready: str  # the Ready condition's status, or "not registered" / "unknown (why)"
    conditions: list[str] = field(default_factory=list)  # those not as a healthy node has them
    pods: dict[str, str] = field(default_factory=dict)  # its CNI or etcd pod -> its state
    kubelet: str = "?"  # `systemctl is-active kubelet`
    log: list[str] = field(default_factory=list)  # the kubelet's last different messages

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "ready": self.ready,
            "conditions": self.conditions,
            "pods": self.pods,
            "kubelet": self.kubelet,
            "kubelet_log": self.log,
        }


@dataclass
class Report:
    connectivity: list[TcpPath]
    snapshot: Snapshot
    stale: list[Stale]
    recommendation: Recommendation
    endpoint: list[EndpointState]  # empty unless the endpoint is a VIP
    unhealthy: list[NodeHealth] = field(default_factory=list)

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
            "unhealthy_nodes": [h.to_dict() for h in self.unhealthy],
            "recommendation": self.recommendation.to_dict(),
        }


def recommend(
    paths: list[TcpPath],
    snap: Snapshot,
    stale: list[Stale],
    unhealthy: Sequence[NodeHealth] = (),
) -> Recommendation:
    """The most likely root cause, in the order a person would check it."""
    health = {h.node: h for h in unhealthy}
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
    dead = silent(snap)
    if dead:
        why = snap.statuses.get(members[dead[0]].id)
        h = health.get(dead[0])
        pod = "; ".join(f"{k}: {v}" for k, v in h.pods.items()) if h else ""
        kubelet = f"kubelet {h.kubelet}" if h else "kubelet ?"
        return Recommendation(
            f"etcd on {', '.join(dead)} does not answer",
            f"{why}; its static pod: {pod or 'no pod status (the API may be down)'}, {kubelet}."
            f" The kubelet restarts etcd from /etc/kubernetes/manifests/etcd.yaml: `lab ssh"
            f" {dead[0]} -- journalctl -u kubelet -n 50`, and etcd's own log in"
            f" /var/log/pods/kube-system_etcd-{dead[0]}_*",
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
    not_ready = [h for h in unhealthy if h.ready in ("False", "Unknown")]  # joined, not Ready
    if not_ready:
        return not_ready_cause(not_ready)
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


def silent(snap: Snapshot) -> list[str]:
    """The started members that gave no status: their etcd does not answer."""
    return [snap.label(m) for m in snap.members if m.started and snap.status(m) is None]


def not_ready_cause(nodes: Sequence[NodeHealth]) -> Recommendation:
    """The guide's "join succeeds but node stays NotReady": the kubelet, then the CNI pod."""
    h = nodes[0]
    names = ", ".join(n.node for n in nodes)
    why = "; ".join(h.conditions) or f"Ready {h.ready}"
    last = " | ".join(h.log[-2:]) or "no log lines"
    if h.kubelet != "active":
        detail = (
            f"the kubelet on {h.node} is {h.kubelet}, so nothing posts its status ({why}):"
            f" `lab ssh {h.node} -- systemctl start kubelet`; its last lines: {last}"
        )
    elif bad := {p: s for p, s in h.pods.items() if not s.startswith("Running")}:
        pod, state = next(iter(bad.items()))
        detail = (
            f"its CNI pod {pod} is {state} ({why}): `lab kubectl -n kube-flannel logs {pod}`"
            f" and `lab kubectl -n kube-flannel describe pod {pod}`"
        )
    else:
        detail = f"{why}; the kubelet is active, its last lines: {last}"
    return Recommendation(f"node {names} NotReady", detail)


def pod_state(pod: dict[str, Any]) -> str:
    """`Running, 0 restarts` / `Pending: ContainerCreating` / `Running: CrashLoopBackOff, 5
    restarts`: the phase, a container's reason for not running, and its restarts."""
    status = pod.get("status", {})
    text = status.get("phase", "?")
    for c in status.get("containerStatuses", []):
        for how in ("waiting", "terminated"):
            if reason := c.get("state", {}).get(how, {}).get("reason"):
                text += f": {reason}"
                break
    restarts = sum(c.get("restartCount", 0) for c in status.get("containerStatuses", []))
    return f"{text}, {restarts} restart{'s' * (restarts != 1)}"


def abnormal(conditions: list[dict[str, Any]]) -> list[str]:
    """The conditions not as on a healthy node (Ready True, every pressure False)."""
    return [
        f"{c.get('type')}={c.get('status')} {c.get('reason', '')}: {c.get('message', '')}".strip(
            ": "
        )
        for c in conditions
        if (c.get("status") == "True") != (c.get("type") == "Ready")
    ]


async def node_health(session: Session, snap: Snapshot) -> list[NodeHealth]:
    """The NotReady nodes (from the API) and the control planes whose etcd does not answer, each
    with its pods' state and the kubelet's, read at once (one kubectl each, one SSH per node)."""
    answered = {n.name for n in session.topo.nodes} - set(silent(snap))
    try:
        admin = await admin_node(session)
        nodes, pods = await asyncio.gather(
            kube_get_json(session, "nodes", admin), kube_get_json(session, "pods -A", admin)
        )
        items = {i["metadata"]["name"]: i for i in json.loads(nodes).get("items", [])}
        pod_items = json.loads(pods).get("items", [])
        api_error = ""
    except (OpFailed, SshError, json.JSONDecodeError, KeyError) as e:
        items, pod_items, api_error = {}, [], str(e).splitlines()[0] if str(e) else "no answer"
    out = []
    for node in session.topo.nodes:
        conds = items.get(node.name, {}).get("status", {}).get("conditions", [])
        ready = next((c.get("status", "?") for c in conds if c.get("type") == "Ready"), None)
        if ready is None:
            ready = f"unknown ({api_error})" if api_error else "not registered"
        if ready == "True" and node.name in answered:
            continue
        mine = {
            p["metadata"]["name"]: pod_state(p)
            for p in pod_items
            if p.get("spec", {}).get("nodeName") == node.name
            and (
                p["metadata"].get("namespace") == "kube-flannel"
                or p["metadata"]["name"] == f"etcd-{node.name}"
            )
        }
        out.append(NodeHealth(node.name, ready, abnormal(conds), mine))

    async def kubelet(h: NodeHealth) -> None:
        command = (
            "systemctl is-active kubelet; echo ---;"
            " journalctl -u kubelet -n 300 --no-pager -o cat 2>/dev/null"
        )
        try:
            node = session.topo.node(h.node)
            r = await session.shell(node).run(command, timeout=30 * session.slowdown)
            state, _, log = r.stdout.partition("---")
            h.kubelet = state.strip() or "?"
            h.log = last_distinct(log.splitlines(), 5)
        except SshError as e:
            h.kubelet = f"unknown ({e})"

    await asyncio.gather(*(kubelet(h) for h in out))
    return out


KLOG_HEADER = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ \S+\] ")  # E1206 05:48:26.88 5223 x.go:108]


def last_distinct(lines: Sequence[str], n: int) -> list[str]:
    """The last `n` different messages, oldest first (klog's time, pid and source left out to
    compare): a kubelet that cannot register repeats one line several times a second, which
    hid the one saying why (HA run 19: its API server refused connections)."""
    seen: set[str] = set()
    out: list[str] = []
    for line in reversed(lines):
        line = line.strip()
        message = KLOG_HEADER.sub("", line)
        if message and message not in seen:
            seen.add(message)
            out.append(line)
            if len(out) == n:
                break
    return out[::-1]


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
    busy, unhealthy = await asyncio.gather(joining(session, snap), node_health(session, snap))
    stale = stale_learners(
        [snap], node=None, max_lag=session.cfg.tuning.gate_max_applied_lag, joining=busy
    )
    return Report(paths, snap, stale, recommend(paths, snap, stale, unhealthy), vip, unhealthy)


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
    lines.append("nodes not Ready, etcd not answering:" + ("" if report.unhealthy else " none"))
    for h in report.unhealthy:
        lines.append(f"  {h.node}: Ready {h.ready}, kubelet {h.kubelet}")
        lines += [f"    condition {c}" for c in h.conditions]
        lines += [f"    pod {name}: {state}" for name, state in h.pods.items()]
        lines += [f"    kubelet log: {line}" for line in h.log]
    lines.append("")
    lines.append(f"recommendation: {report.recommendation.cause}")
    lines.append(f"  {report.recommendation.detail}")
    return "\n".join(lines)
