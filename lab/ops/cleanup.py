"""Stale learners: the learner a failed kubeadm join leaves behind blocks every later join
("too many learner members in cluster"). A learner is stale when it belongs to the node being
(re)joined, never started, does not answer, or does not catch up between two looks. Never a voter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from lab.etcd import Member
from lab.ops.common import Lab, Snapshot
from lab.topology import Node


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
    snaps: list[Snapshot],
    *,
    node: str | None,
    node_of: Callable[[Member], Node | None],
    max_lag: int,
    label: Callable[[Member], str] = lambda m: m.label,
) -> list[Stale]:
    """The stale learners of the last snapshot; earlier snapshots show (lack of) progress."""
    last = snaps[-1]
    out = []
    for m in last.learners:
        owner = node_of(m)
        seen = [_lag(s, m) for s in snaps if any(x.id == m.id for x in s.learners)]
        lags = [g for g in seen if g is not None]
        if node is not None and owner is not None and owner.name == node:
            reason = f"belongs to {node}, which is being (re)joined"
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
        out.append(Stale(m, label(m), reason))
    return out


async def find_stale(lab: Lab, node: str | None = None) -> list[Stale]:
    snaps = [await lab.snapshot()]
    lagging = [
        m
        for m in snaps[0].learners
        if (_lag(snaps[0], m) or 0) > lab.cfg.tuning.gate_max_applied_lag
    ]
    if lagging:  # look again a little later: is it catching up?
        await asyncio.sleep(max(lab.cfg.tuning.gate_poll_interval_seconds, 1.0))
        snaps.append(await lab.snapshot())
    return stale_learners(
        snaps,
        node=node,
        node_of=lab.node_of,
        max_lag=lab.cfg.tuning.gate_max_applied_lag,
        label=lab.member_label,
    )


async def cleanup_learners(
    lab: Lab, node: str | None = None, *, dry_run: bool = False
) -> list[Stale]:
    """Remove (or with dry_run only list) the stale learners; returns what was found."""
    stale = await find_stale(lab, node)
    if not stale:
        lab.say(node, "no stale learner")
    etcd = await lab.etcd()
    for s in stale:
        if dry_run:
            lab.say(node, f"would remove learner {s.label} ({s.member.hex_id}): {s.reason}")
            continue
        await etcd.remove_member(s.member.id)
        lab.say(node, f"removed learner {s.label} ({s.member.hex_id}): {s.reason}")
    return stale
