"""`lab rehearse`: the troubleshooting guide's failures, played on purpose on the live lab.

Each scenario saves a snapshot of the lab, injects its fault inside the guests (iptables rules,
the kubelet stopped, etcd's process killed, a learner added), runs the operation the guide's
section is about (a control plane taken out and joined again, a gate), asks `lab diagnose` what it
sees, clears the fault (a transient one after a set time while the operation runs, a permanent one
once the operation gave up), checks that the lab recovers (the gate on every control plane, then
`lab verify`), and restores the snapshot unless --keep. It prints one row per scenario.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from lab.etcd import PEER_PORT, EtcdError
from lab.ops import snapshot
from lab.ops.common import OpFailed, Progress, Session, columns
from lab.ops.diagnose import diagnose
from lab.ops.gate import RECORD, gate
from lab.ops.join import join
from lab.ops.leave import leave
from lab.ops.verify import settled
from lab.ssh import SshError
from lab.topology import Node

TRANSIENT_SECONDS = 5.0  # a transient fault's life, times the domain type's slowdown
LOSS = 0.2  # the share of the other control planes' packets a joining one drops (packet-loss)


@dataclass(frozen=True)
class Scenario:
    name: str
    section: str  # the guide's words for it
    what: str  # the fault and the operation, for --list
    rejoin: bool = False  # takes the last control plane out and joins it again (needs 3)


SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "peer-blocked",
            "can only promote a learner member which is in sync with leader",
            "port 2380 blocked on a control plane as its kubeadm join starts, lifted after a"
            " while: the join finishes",
            rejoin=True,
        ),
        Scenario(
            "peer-blocked-for-good",
            "can only promote a learner member which is in sync with leader",
            "port 2380 blocked for a whole join: it gives up with etcd as before; cleared, the"
            " control plane joins",
            rejoin=True,
        ),
        Scenario(
            "stale-learner",
            "too many learner members in cluster",
            "a learner left by an earlier attempt, before a control plane joins: the join"
            " removes it first",
            rejoin=True,
        ),
        Scenario(
            "leader-killed",
            "etcd leader changes while the next control plane waits",
            "the etcd leader's process killed during a gate, started again after a while: the"
            " gate waits for a new stable window",
        ),
        Scenario(
            "not-ready",
            "join succeeds but node stays NotReady",
            "the last node's kubelet stopped: diagnose names it; started again, the node is Ready",
        ),
        Scenario(
            "packet-loss",
            "flaky network between control planes",
            f"{LOSS:.0%} of what the other control planes send a joining one dropped (inside the"
            " guest) for the whole join",
            rejoin=True,
        ),
    )
}


@dataclass
class Row:
    scenario: str
    injected: str = ""
    diagnosed: str = ""
    did: str = ""
    recovered_seconds: float | None = None
    members_before: list[str] = field(default_factory=list)
    members_after: list[str] = field(default_factory=list)
    learners_left: int = 0
    ok: bool = False
    error: str = ""


def refusal(scenario: Scenario, session: Session) -> str | None:
    """Why this lab cannot play the scenario, or None."""
    cps = len(session.topo.control_planes)
    if scenario.rejoin and cps < 3:
        return (
            f"{scenario.name} takes a control plane out and joins it again, keeping etcd's"
            f" quorum: it needs 3 control planes, this lab has {cps} (control_plane.count)"
        )
    return None


class Watched(Progress):
    """Progress lines as usual, and an event set once a line contains `text`."""

    def __init__(self, inner: Progress, text: str) -> None:
        super().__init__(inner.stream)
        self.t0, self.text, self.seen = inner.t0, text, asyncio.Event()

    def __call__(self, node: str | None, message: str) -> None:
        super().__call__(node, message)
        if self.text in message:
            self.seen.set()


async def on(session: Session, node: Node, command: str) -> None:
    """Run a fault's command (or its undo) on the node, saying so."""
    session.say(node.name, f"drill: {command}")
    await session.shell(node).run(command, timeout=60 * session.slowdown, check=True)


def peer_rules(action: str) -> str:
    """iptables commands adding (-I) or deleting (-D) a DROP of every packet to or from 2380."""
    return "; ".join(
        f"iptables {action} INPUT -p tcp {flag} {PEER_PORT} -j DROP"
        for flag in ("--dport", "--sport")
    )


def loss_rules(action: str, peers: list[Node]) -> str:
    """iptables commands adding (-I) or deleting (-D) a random drop of LOSS of what each peer
    sends (iptables' statistic match: tc netem is not in every kernel)."""
    return "; ".join(
        f"iptables {action} INPUT -s {p.address} -m statistic --mode random --probability {LOSS}"
        " -j DROP"
        for p in peers
    )


KILL_ETCD = "kill -9 $(ss -Hltnp 'sport = :2380' | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u)"


async def voters(session: Session) -> list[str]:
    return (await session.snapshot()).voter_names


async def diagnosed(session: Session, expect: str | None, wait: float) -> str:
    """`lab diagnose`'s cause, asked again until it contains `expect` or `wait` runs out."""
    deadline = time.monotonic() + wait
    while True:
        cause = (await diagnose(session)).recommendation.cause
        if expect is None or expect in cause or time.monotonic() > deadline:
            return cause
        await asyncio.sleep(session.gate_window)


async def recover(session: Session, since: float) -> float:
    """The gate on every control plane, then `lab verify --wait`; seconds since `since`."""
    if why := await settled(session, len(session.topo.control_planes)):
        raise OpFailed(f"no recovery: {why}")
    return time.monotonic() - since


async def taken_out(session: Session) -> Node:
    """The last control plane, out of etcd and reset: the one the rejoin scenarios join again."""
    node = session.topo.control_planes[-1]
    await leave(session, node)
    result = await gate(session, len(session.topo.control_planes) - 1)
    if not result.ok:
        raise OpFailed(f"after {node.name} left: " + "; ".join(map(str, result.violations)))
    return node


async def peer_blocked(session: Session, row: Row) -> None:
    node = await taken_out(session)
    watched = Watched(session.say, "kubeadm join")
    session.say = watched
    joining = asyncio.create_task(join(session, node.name))
    started = asyncio.create_task(watched.seen.wait())
    await asyncio.wait({joining, started}, return_when=asyncio.FIRST_COMPLETED)
    if joining.done():
        started.cancel()
        await joining  # its error, if it failed
        raise OpFailed(f"{node.name} joined without running kubeadm join: nothing to block")
    await on(session, node, peer_rules("-I"))
    row.injected = f"{node.name}: 2380 dropped both ways, as its kubeadm join started"
    began = time.monotonic()
    row.diagnosed = await diagnosed(session, f"{node.name} -> ", 0)
    await asyncio.sleep(max(0.0, TRANSIENT_SECONDS * session.slowdown - (time.monotonic() - began)))
    await on(session, node, peer_rules("-D"))
    cleared = time.monotonic()
    attempt = await joining
    row.did = f"joined on attempt {attempt} once the block was lifted"
    row.recovered_seconds = await recover(session, cleared)


async def peer_blocked_for_good(session: Session, row: Row) -> None:
    node = await taken_out(session)
    await on(session, node, peer_rules("-I"))
    row.injected = f"{node.name}: 2380 dropped both ways for the whole join"
    row.diagnosed = await diagnosed(session, f"{node.name} -> ", 0)
    before = await voters(session)
    t = session.cfg.tuning
    brief = t.model_copy(update={"cp_join_retry_attempts": 2})  # a drill: give up soon
    short = Session(session.cfg.model_copy(update={"tuning": brief}), session.say)
    try:
        await join(short, node.name)
        row.did = "joined although 2380 was blocked (unexpected)"
    except OpFailed as e:
        after = await voters(session)
        same = "etcd as before" if after == before else f"etcd now {after}, was {before}"
        row.did = f"gave up ({str(e).split(';')[0]}); {same}; joined once cleared"
    finally:
        await short.close()
    await on(session, node, peer_rules("-D"))
    cleared = time.monotonic()
    await join(session, node.name)
    row.recovered_seconds = await recover(session, cleared)


async def stale_learner(session: Session, row: Row) -> None:
    node = await taken_out(session)
    learner = await (await session.etcd()).add_member(f"https://{node.address}:{PEER_PORT}")
    row.injected = f"learner {learner.hex_id} with {node.name}'s peer URL, never started"
    row.diagnosed = await diagnosed(session, "stale learner", 0)
    began = time.monotonic()
    attempt = await join(session, node.name)
    row.did = f"removed the learner, joined on attempt {attempt}"
    row.recovered_seconds = await recover(session, began)


async def leader_killed(session: Session, row: Row) -> None:
    snap = await session.snapshot()
    leader = snap.node_of(snap.leader) if snap.leader else None
    if leader is None:
        raise OpFailed("no etcd leader to kill")
    (session.cfg.state_dir / RECORD).unlink(missing_ok=True)  # this gate needs its own window
    gating = asyncio.create_task(gate(session, len(session.topo.control_planes)))
    await asyncio.sleep(session.poll_interval)
    await on(session, leader, KILL_ETCD)
    row.injected = f"etcd on {leader.name} (the leader) killed during the gate"
    began = time.monotonic()
    one = len(session.topo.control_planes) == 1
    expect = "etcd does not answer" if one else f"etcd on {leader.name} does not answer"
    row.diagnosed = await diagnosed(session, expect, 0)
    await asyncio.sleep(max(0.0, TRANSIENT_SECONDS * session.slowdown - (time.monotonic() - began)))
    await on(session, leader, "systemctl restart kubelet")  # as the kubelet would, sooner
    cleared = time.monotonic()
    result = await gating
    after = await session.snapshot()
    new = after.label(after.leader) if after.leader else "?"
    row.did = (
        f"the gate waited {result.elapsed:.0f}s ({result.polls} polls) for a stable window;"
        f" leader now {new}"
        if result.ok
        else "the gate failed: " + "; ".join(map(str, result.violations))
    )
    row.recovered_seconds = await recover(session, cleared)


async def not_ready(session: Session, row: Row) -> None:
    node = (session.topo.workers or session.topo.control_planes)[-1]
    await on(session, node, "systemctl stop kubelet")
    row.injected = f"kubelet on {node.name} stopped"
    # The node controller marks a node NotReady once its status is 40 s old (50 s since 1.32).
    row.diagnosed = await diagnosed(session, f"node {node.name} NotReady", 120 * session.slowdown)
    await on(session, node, "systemctl start kubelet")
    cleared = time.monotonic()
    row.did = "named by diagnose; the kubelet started again"
    row.recovered_seconds = await recover(session, cleared)


async def packet_loss(session: Session, row: Row) -> None:
    node = await taken_out(session)
    peers = [n for n in session.topo.control_planes if n != node]
    await on(session, node, loss_rules("-I", peers))
    row.injected = f"{LOSS:.0%} of {', '.join(p.name for p in peers)} -> {node.name} dropped"
    row.diagnosed = await diagnosed(session, None, 0)
    try:
        attempt = await join(session, node.name)
        row.did = f"joined on attempt {attempt} through the loss"
    finally:
        await on(session, node, loss_rules("-D", peers))
    row.recovered_seconds = await recover(session, time.monotonic())


PLAYS: dict[str, Callable[[Session, Row], Awaitable[None]]] = {
    "peer-blocked": peer_blocked,
    "peer-blocked-for-good": peer_blocked_for_good,
    "stale-learner": stale_learner,
    "leader-killed": leader_killed,
    "not-ready": not_ready,
    "packet-loss": packet_loss,
}


async def play(session: Session, scenario: Scenario, *, keep: bool) -> Row:
    """One scenario between a snapshot's save and its restore (kept with --keep)."""
    row = Row(scenario.name)
    name = f"rehearse-{scenario.name}"
    if snapshot.folder(session.cfg.state_dir, name).exists():
        await snapshot.delete(session.cfg, [name])  # left by an interrupted rehearsal
    await snapshot.save(session, name)
    row.members_before = await voters(session)
    say = session.say
    try:
        await PLAYS[scenario.name](session, row)
        snap = await session.snapshot()
        row.members_after = snap.voter_names
        row.learners_left = len(snap.learners)
        row.ok = row.members_after == row.members_before and not row.learners_left
    except (OpFailed, SshError, EtcdError) as e:
        row.error = str(e)
    finally:
        session.say = say
    if keep:
        say(None, f"--keep: the lab stays as the drill left it; `lab snapshot restore {name}`")
        return row
    try:
        await snapshot.restore(session, name)
        await snapshot.delete(session.cfg, [name])
    except (OpFailed, SshError, EtcdError) as e:
        row.ok, row.error = False, f"{row.error}; restoring {name} failed: {e}".lstrip("; ")
    return row


def render(rows: list[Row]) -> str:
    """One row per scenario, then what each injected and what the lab did."""
    table = [
        (
            "SCENARIO",
            "RESULT",
            "RECOVERED",
            "ETCD VOTERS BEFORE -> AFTER",
            "LEARNERS",
            "DIAGNOSED AS",
        )
    ]
    for r in rows:
        table.append(
            (
                r.scenario,
                "ok" if r.ok else "FAILED",
                f"{r.recovered_seconds:.0f}s" if r.recovered_seconds is not None else "-",
                f"{','.join(r.members_before)} -> {','.join(r.members_after) or '?'}",
                str(r.learners_left),
                r.diagnosed or "-",
            )
        )
    lines = columns(table)
    for r in rows:
        lines.append(f"{r.scenario}: injected: {r.injected or '-'}")
        lines.append(f"{' ' * len(r.scenario)}  the lab: {r.did or '-'}")
        if r.error:
            lines.append(f"{' ' * len(r.scenario)}  error: {r.error}")
    return "\n".join(lines)
