"""Stale learners: the learner a failed kubeadm join leaves behind blocks every later join
("too many learner members in cluster"). A learner is stale when it belongs to the node being
(re)joined, never started, does not answer, or does not catch up between two looks. Never a voter,
and never the learner of a node whose `kubeadm join` still runs: HA run 15's cp3 had its learner
added and no etcd manifest for 7.5 min while kubeadm's own etcd calls went on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from lab.etcd import Member
from lab.ops.common import Session, Snapshot
from lab.ops.node import kubeadm_join_runs


@dataclass(frozen=True)
class Stale:
    member: Member
    label: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.member.hex_id, "name": self.label, "reason": self.reason}


def _lag(snap: Snapshot, m: Member) -> int | None:
    lead, s = snap.leader_status, snap.status(m)
    if lead is None or s is None:
        return None
    return lead.applied_index - s.applied_index


def stale_learners(
    snaps: list[Snapshot], *, node: str | None, max_lag: int, joining: frozenset[str] = frozenset()
) -> list[Stale]:
    """The stale learners of the last snapshot; earlier snapshots show (lack of) progress.
    `joining`: the nodes whose kubeadm join still runs."""
    last = snaps[-1]
    out = []
    for m in last.learners:
        owner = last.node_of(m)
        seen = [_lag(s, m) for s in snaps if any(x.id == m.id for x in s.learners)]
        lags = [g for g in seen if g is not None]
        if node is not None and owner is not None and owner.name == node:
            reason = f"belongs to {node}, which is being (re)joined"
        elif owner is not None and owner.name in joining:
            continue
        elif not m.started:
            reason = "added but never started"
        elif last.status(m) is None:
            reason = f"its endpoint does not answer ({last.statuses.get(m.id, 'no status')})"
        elif (
            len(lags) >= 2
            and len(lags) == len(seen)
            and all(g > max_lag for g in lags)
            and lags[-1] >= lags[0]
        ):
            reason = f"not catching up: {lags[0]} -> {lags[-1]} entries behind the leader"
        else:
            continue
        out.append(Stale(m, last.label(m), reason))
    return out


async def joining(session: Session, snap: Snapshot) -> frozenset[str]:
    """The nodes with a learner whose `kubeadm join` still runs."""
    owners = list({o.name: o for m in snap.learners if (o := snap.node_of(m))}.values())
    runs = await asyncio.gather(*(kubeadm_join_runs(session, o) for o in owners))
    return frozenset(o.name for o, r in zip(owners, runs, strict=True) if r)


async def find_stale(session: Session, node: str | None = None) -> list[Stale]:
    t = session.cfg.tuning
    snaps = [await session.snapshot()]
    if any((_lag(snaps[0], m) or 0) > t.gate_max_applied_lag for m in snaps[0].learners):
        await asyncio.sleep(max(session.poll_interval, 1.0))  # is it catching up?
        snaps.append(await session.snapshot())
    busy = await joining(session, snaps[-1])
    return stale_learners(snaps, node=node, max_lag=t.gate_max_applied_lag, joining=busy)


async def cleanup_learners(
    session: Session, node: str | None = None, *, dry_run: bool = False
) -> list[Stale]:
    """Remove (or with dry_run only list) the stale learners; returns what was found."""
    stale = await find_stale(session, node)
    if not stale:
        session.say(node, "no stale learner")
    etcd = await session.etcd()
    for s in stale:
        if dry_run:
            session.say(node, f"would remove learner {s.label} ({s.member.hex_id}): {s.reason}")
            continue
        await etcd.remove_member(s.member.id)
        session.say(node, f"removed learner {s.label} ({s.member.hex_id}): {s.reason}")
    return stale
