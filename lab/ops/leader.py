"""The etcd leader kept off a control plane whose etcd is about to be busy or restarted: a
joining node (lab.ops.join) and a control plane being upgraded (lab.ops.upgrade)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from lab.etcd import EtcdError, client_url
from lab.ops.common import OpFailed, Session
from lab.topology import Node

# HA run 13: cp3's member, a voter early in its join, was elected leader while cp3's own control
# plane was starting; it logged "leader failed to send out heartbeat on time" 29 times, the
# leader changed three times in 90 s, and every API server waited on it. The node being joined
# is the busiest voter, so while it leads, its leadership is handed to the first other voter
# (etcd's MoveLeader, what `etcdctl move-leader` sends), and the cluster's leader stays on a
# node that has finished starting.
LEADER_CHECK_SECONDS = 5


@contextlib.asynccontextmanager
async def leader_kept_off(session: Session, node: Node) -> AsyncIterator[None]:
    task = asyncio.ensure_future(keep_leader_off(session, node))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def keep_leader_off(session: Session, node: Node) -> None:
    """Every few seconds, one status call to the node's member; a leader move when it leads. A
    loaded etcd that does not answer is asked again next time."""
    endpoint = client_url(node.address)
    while True:
        await asyncio.sleep(LEADER_CHECK_SECONDS)
        try:
            etcd = await session.etcd()
            status = await etcd.status(endpoint)
            if status.leader != status.member_id:
                continue
            snap = await session.snapshot()
            others = [m for n in snap.voting_nodes if n != node for m in snap.members_of(n)]
            target = next((m for m in others if not m.is_learner), None)
            if target is None:
                continue
            await etcd.move_leader(endpoint, target.id)
        except (EtcdError, OpFailed):
            continue
        session.say(node.name, f"its etcd member led: leadership handed to {target.name}")
