"""The gate: wait until etcd is stable before (and after) a control plane joins. Stable means
exactly N started voters and no learner, one leader and one raft term every member agrees on,
applied indexes close to the leader's, no alarm, and a linearizable read that succeeds, for K
consecutive polls over a minimum window: a promote fails unless the learner can catch up.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from lab.ops.common import Session, Snapshot


@dataclass(frozen=True)
class Violation:
    rule: str  # members | started | status | leader | term | applied | alarm | read
    member: str  # the member it is about, or "cluster"
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.member}: {self.detail}"


def check(snap: Snapshot, voters: int, max_lag: int) -> list[Violation]:
    """Every rule of the gate that does not hold in this snapshot (empty: it is stable)."""
    if snap.list_error and not snap.members:
        return [Violation("members", "cluster", f"member list failed: {snap.list_error}")]
    out: list[Violation] = []
    label = snap.label
    names = ", ".join(label(m) for m in snap.voters) or "none"
    if len(snap.voters) != voters:
        out.append(
            Violation(
                "members", "cluster", f"expected {voters} voters, found {len(snap.voters)}: {names}"
            )
        )
    for m in snap.learners:
        out.append(Violation("members", label(m), "is a learner (not promoted)"))
    for m in snap.members:
        if not m.started:
            out.append(Violation("started", label(m), "added but never started (no name)"))
    statuses = {}
    for m in snap.members:
        s = snap.statuses.get(m.id)
        if s is None or isinstance(s, str):
            out.append(
                Violation("status", label(m), f"endpoint does not answer: {s or 'no status'}")
            )
        else:
            statuses[m.id] = s
    leaders = {s.leader for s in statuses.values()}
    ids = {m.id: m for m in snap.members}
    if 0 in leaders:
        for mid, s in statuses.items():
            if s.leader == 0:
                out.append(Violation("leader", label(ids[mid]), "sees no leader"))
    elif len(leaders) > 1:
        seen = ", ".join(f"{label(ids[mid])} -> {s.leader:x}" for mid, s in statuses.items())
        out.append(Violation("leader", "cluster", f"members disagree on the leader: {seen}"))
    elif leaders:
        (lead,) = leaders
        if lead not in ids or ids[lead].is_learner:
            out.append(Violation("leader", "cluster", f"leader {lead:x} is not a voting member"))
    terms = {s.raft_term for s in statuses.values()}
    if len(terms) > 1:
        seen = ", ".join(f"{label(ids[mid])}={s.raft_term}" for mid, s in statuses.items())
        out.append(Violation("term", "cluster", f"members disagree on the raft term: {seen}"))
    lead_status = snap.leader_status
    if lead_status is not None:
        for mid, s in statuses.items():
            lag = lead_status.applied_index - s.applied_index
            if lag > max_lag:
                out.append(
                    Violation(
                        "applied",
                        label(ids[mid]),
                        f"applied index {s.applied_index} is {lag} behind the leader's"
                        f" {lead_status.applied_index} (max {max_lag})",
                    )
                )
    for a in snap.alarms:
        who = label(ids[a.member_id]) if a.member_id in ids else f"{a.member_id:x}"
        out.append(Violation("alarm", who, f"alarm {a.alarm} raised"))
    for mid, s in statuses.items():
        if s.errors:
            out.append(
                Violation("alarm", label(ids[mid]), "reports errors: " + "; ".join(s.errors))
            )
    if snap.read_error:
        out.append(Violation("read", "cluster", f"linearizable read failed: {snap.read_error}"))
    return out


@dataclass
class GateResult:
    ok: bool
    elapsed: float
    polls: int
    violations: list[Violation]


async def gate(
    session: Session, voters: int, timeout: float | None = None, *, who: str = "gate"
) -> GateResult:
    """Poll until the snapshot is stable for K polls over the minimum window, or time out."""
    t, say = session.cfg.tuning, session.say
    timeout = t.cp_stabilize_timeout_seconds if timeout is None else timeout
    say(who, f"waiting for a stable etcd with {voters} voter(s) (up to {timeout:.0f}s)")
    t0 = time.monotonic()
    streak, streak_start, polls = 0, 0.0, 0
    last: list[Violation] = []
    shown: set[str] = set()
    while True:
        polls += 1
        now = time.monotonic()
        snap = await session.snapshot()
        last = check(snap, voters, t.gate_max_applied_lag)
        if last:
            streak = 0
            rules = {str(v) for v in last}
            if rules != shown:
                say(who, "not stable: " + "; ".join(sorted(rules)))
                shown = rules
        else:
            if streak == 0:
                streak_start = now
            streak += 1
            shown = set()
            if (
                streak >= t.gate_consecutive_polls
                and now - streak_start >= t.gate_min_window_seconds
            ):
                lead, term = snap.leader, snap.leader_status
                lead_name = snap.label(lead) if lead else "?"
                say(
                    who,
                    f"stable: {voters} voter(s), no learner, leader {lead_name},"
                    f" term {term.raft_term if term else '?'} ({streak} polls)",
                )
                return GateResult(True, time.monotonic() - t0, polls, [])
        if time.monotonic() - t0 + t.gate_poll_interval_seconds > timeout:
            if not last:
                last = [
                    Violation(
                        "window",
                        "cluster",
                        f"stable for {streak} poll(s) only; the timeout came first",
                    )
                ]
            return GateResult(False, time.monotonic() - t0, polls, last)
        await asyncio.sleep(t.gate_poll_interval_seconds)
