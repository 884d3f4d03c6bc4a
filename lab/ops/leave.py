"""`lab leave <node>`: remove a node safely. It refuses to remove the last voter or to leave
fewer healthy voters than the remaining cluster's quorum (unless forced); it removes the etcd
member first, then resets the node and deletes its Node object (tried again while the API server
does not answer). A node that is not a member is a no-op etcd-wise. The node need not be in the
config any more: a join's delete command names it (address, role, host key), so scaling down by
editing the config still removes it.
"""

from __future__ import annotations

import time

from lab.etcd import Member
from lab.ops.common import OpFailed, Session, Snapshot
from lab.ops.node import admin_node, kubeadm_reset, kubectl_until_ok
from lab.ssh import SshError
from lab.topology import Node

# How long `kubectl delete node` and the member's removal are tried, scaled by the slowdown. HA
# run 16: the scale-down's removal of cp3 timed out once (60 s) on a cluster loaded by cp1's
# restart, and the whole `pulumi up` failed on it.
NODE_DELETE_SECONDS = 120
MEMBER_REMOVE_SECONDS = 60


def quorum(n: int) -> int:
    return n // 2 + 1


def leave_refusal(snap: Snapshot, target: Member) -> str | None:
    """Why removing `target` would be unsafe, or None when it is safe."""
    name = snap.label(target)
    if target.is_learner:
        return None  # a learner has no vote
    voters = snap.voters
    if len(voters) <= 1:
        return f"{name} is the last voting member; removing it destroys the cluster"
    healthy_now = [m for m in voters if snap.healthy(m)]
    if len(healthy_now) < quorum(len(voters)):
        return (
            f"only {len(healthy_now)} of {len(voters)} voters are healthy: etcd has no quorum"
            " to commit the removal"
        )
    remaining = [m for m in voters if m.id != target.id]
    healthy_after = [m for m in remaining if snap.healthy(m)]
    if len(healthy_after) < quorum(len(remaining)):
        return (
            f"removing {name} leaves {len(healthy_after)} healthy of {len(remaining)} voters,"
            f" below the quorum of {quorum(len(remaining))}"
        )
    return None


async def leave(session: Session, node: Node, *, force: bool = False) -> None:
    name = node.name
    try:
        await session.shell(node).connect()
        reachable = True
    except SshError as e:
        if e.kind in ("hostkey", "auth"):
            raise OpFailed(f"{e}; nothing changed") from None  # a wrong node or key: touch nothing
        session.say(name, f"warning: {e}; removing its etcd member anyway")
        reachable = False
    snap = await session.snapshot()
    mine = snap.members_of(node)
    if not mine:
        session.say(name, "not an etcd member: nothing to remove")
    for m in mine:
        why = leave_refusal(snap, m)
        if why and not force:
            raise OpFailed(f"refusing to remove {name}: {why} (use --force to override)")
        if why:
            session.say(name, f"--force: removing anyway: {why}")
        await (await session.etcd()).remove_member(
            m.id, wait=MEMBER_REMOVE_SECONDS * session.slowdown
        )
        session.say(
            name, f"removed etcd member {m.hex_id} ({'learner' if m.is_learner else 'voter'})"
        )
    if not reachable:
        session.say(name, "left etcd; the node itself was not reset (unreachable)")
        return
    session.say(name, "kubeadm reset -f")
    try:
        await kubeadm_reset(session, node)
    except (OpFailed, SshError) as e:
        if mine:
            raise
        session.say(name, f"warning: {e}")
    if name != session.topo.first.name:  # cp1 leaves last: the cluster goes with it
        await delete_node_object(session, name)
    session.say(name, "left the cluster")


async def delete_node_object(session: Session, name: str) -> None:
    """Delete the node's Node object, trying again while the API server does not answer (it did
    not through the VIP while haproxy reloaded, HA run 11). With no control plane left to run
    kubectl there is no cluster to keep tidy: a warning."""
    try:
        admin = await admin_node(session, besides=name)
    except (OpFailed, SshError) as e:
        session.say(name, f"warning: its Node object stays: {e}")
        return
    deadline = time.monotonic() + NODE_DELETE_SECONDS * session.slowdown
    try:
        await kubectl_until_ok(session, admin, f"delete node {name} --ignore-not-found", deadline)
    except OpFailed as e:
        raise OpFailed(
            f"{name} left etcd and was reset, but its Node object stays: {e}."
            f" Run `lab leave {name}` again once the API server answers"
        ) from None
