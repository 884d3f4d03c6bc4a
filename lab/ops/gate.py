"""The gate: wait until etcd is stable before (and after) a control plane joins. Stable means
exactly N started voters and no learner, one leader and one raft term every member agrees on,
applied indexes close to the leader's, no alarm, and a linearizable read that succeeds, for K
consecutive polls over a minimum window: a promote fails unless the learner can catch up.

The window is counted from the first stable poll that saw the same members, leader and term,
by this gate or an earlier one (or `lab init`, or a join's watch of its member; the state folder
keeps it): the term changes with every election, so the same term at both ends means no leader
changed in between, and any poll in between that was not stable forgets the record. A gate that
follows another with nothing changed (the chain's gate after a join's own, the next join's
before it) passes at its first poll.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lab.etcd import EtcdError
from lab.ops.common import OpFailed, Session, Snapshot

RECORD = "etcd-stable.json"  # in the state folder


@dataclass(frozen=True)
class Violation:
    rule: str  # members | started | status | leader | term | applied | alarm | read | window
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


@dataclass(frozen=True)
class Evidence:
    """What only an election or a membership change alters, as a stable poll saw it."""

    members: tuple[int, ...]
    leader: int
    term: int

    @classmethod
    def of(cls, snap: Snapshot) -> Evidence:
        lead = snap.leader_status
        members = tuple(sorted(m.id for m in snap.members))
        return cls(members, lead.member_id if lead else 0, lead.raft_term if lead else 0)


def stable_since(state_dir: Path, seen: Evidence | None, now: float) -> float | None:
    """Note one poll (`seen`: stable, None: not) and return since when (time.time()) the lab has
    seen etcd stable as it is now: the record's time when it saw the same, else `now`."""
    path = state_dir / RECORD
    if seen is None:
        path.unlink(missing_ok=True)
        return None
    try:
        kept = json.loads(path.read_text())
        if Evidence(tuple(kept["members"]), kept["leader"], kept["term"]) == seen:
            return float(kept["since"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none yet, or unreadable: start from this poll
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(f".{os.getpid()}")
    part.write_text(json.dumps(asdict(seen) | {"since": now}))
    part.replace(path)  # whole, even with two gates at once
    return now


def note(session: Session, snap: Snapshot, voters: int) -> tuple[list[Violation], float | None]:
    """One poll at `voters` (the gate's, or a look taken anyway: a join's watch) checked and
    kept: its violations, and since when etcd has been stable as now (None: not stable)."""
    violations = check(snap, voters, session.cfg.tuning.gate_max_applied_lag)
    seen = None if violations else Evidence.of(snap)
    return violations, stable_since(session.cfg.state_dir, seen, time.time())


async def note_stable(session: Session, voters: int) -> None:
    """One gate poll, kept for the next gate (`lab init`'s, as flannel is applied); one that
    cannot ask etcd yet notes nothing: the gate asks again."""
    try:
        note(session, await session.snapshot(), voters)
    except (OpFailed, EtcdError):
        return


@dataclass
class GateResult:
    ok: bool
    elapsed: float
    polls: int
    violations: list[Violation]


async def gate(
    session: Session, voters: int, timeout: float | None = None, *, who: str = "gate"
) -> GateResult:
    """Poll until etcd has been stable for the window, over K polls of this gate or since an
    earlier poll saw it the same (above), or time out."""
    t, say = session.cfg.tuning, session.say
    window, interval = session.gate_window, session.poll_interval
    timeout = t.cp_stabilize_timeout_seconds if timeout is None else timeout
    say(who, f"waiting for a stable etcd with {voters} voter(s) (up to {timeout:.0f}s)")
    t0, began = time.monotonic(), time.time()
    streak, polls = 0, 0
    last: list[Violation] = []
    shown: set[str] = set()
    while True:
        polls += 1
        snap = await session.snapshot()
        last, since = note(session, snap, voters)
        now = time.time()
        if since is None:
            streak = 0
            rules = {str(v) for v in last}
            if rules != shown:
                say(who, "not stable: " + "; ".join(sorted(rules)))
                shown = rules
        else:
            streak += 1
            shown = set()
            earlier = since < began  # seen so by an earlier gate: its polls count too
            if now - since >= window and (streak >= t.gate_consecutive_polls or earlier):
                lead, term = snap.leader, snap.leader_status
                lead_name = snap.label(lead) if lead else "?"
                how = f"{streak} polls" if not earlier else "the same since an earlier check"
                say(
                    who,
                    f"stable: {voters} voter(s), no learner, leader {lead_name},"
                    f" term {term.raft_term if term else '?'} for {now - since:.0f}s ({how})",
                )
                return GateResult(True, time.monotonic() - t0, polls, [])
        if time.monotonic() - t0 + interval > timeout:
            if not last:
                last = [
                    Violation(
                        "window",
                        "cluster",
                        f"stable for {streak} poll(s) only; the timeout came first",
                    )
                ]
            return GateResult(False, time.monotonic() - t0, polls, last)
        await asyncio.sleep(interval)
