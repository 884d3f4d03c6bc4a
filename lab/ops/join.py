"""`lab join <node>`: join a node, retried ("Join with retry" in DESIGN.md).

A control plane, attempt k: preflight (SSH, cpN <-> voters on 2380, cpN -> API 6443), forget what
an earlier attempt left (reset the node, remove its member, remove stale learners), gate on the
current voters, fresh credentials from cp1, `kubeadm join`, gate on one more voter. A failure is
classified, the node reset and its member removed, then we back off. A final failure leaves etcd as
it was (no member for the node) and prints a diagnosis. A worker: API check, credentials, join.
"""

from __future__ import annotations

import asyncio
import time

from lab.etcd import PEER_PORT, EtcdError
from lab.ops.classify import classify
from lab.ops.cleanup import cleanup_learners
from lab.ops.common import Lab, OpFailed
from lab.ops.diagnose import diagnose, render
from lab.ops.gate import gate
from lab.ops.node import (
    fetch_credentials,
    install_kube_vip,
    kube_nodes,
    kubeadm_join,
    kubeadm_reset,
    probe,
    wait_until_reachable,
    write_join_config,
)
from lab.ops.retry import Backoff
from lab.render.kubeadm import API_PORT
from lab.ssh import SshError
from lab.topology import Node


async def join(lab: Lab, name: str) -> None:
    node, t = lab.topo.node(name), lab.cfg.tuning
    lab.say(name, f"waiting for SSH and cloud-init (up to {t.join_max_wait_seconds}s)")
    await wait_until_reachable(lab, node, t.join_max_wait_seconds)
    if await already_joined(lab, node):
        lab.say(name, "already joined and healthy: no-op")
        return
    policy, t0, attempt, cause = Backoff.from_tuning(t), time.monotonic(), 0, "unknown"

    def left() -> float:  # what remains of the total budget (at least 30 s for one step)
        return max(t.cp_join_retry_max_total_seconds - (time.monotonic() - t0), 30)

    def step(what: str) -> None:
        lab.say(name, f"attempt {attempt}/{policy.attempts}: {what}")

    while True:
        attempt += 1
        try:
            step("preflight: SSH, peer port 2380 both ways, API endpoint 6443")
            await preflight(lab, node)
            if node.is_control_plane:
                step("remove leftovers: kubeadm reset -f, its etcd member, stale learners")
                await forget(lab, node)
                await cleanup_learners(lab, name)
                voters = len((await lab.snapshot()).voters)
                step(f"gate on the {voters} current voter(s)")
                await stable(lab, voters, min(t.cp_stabilize_timeout_seconds, left()), name)
            step(f"fresh token, CA hash and certificate key from {lab.topo.first.name}")
            creds = await fetch_credentials(lab, control_plane=node.is_control_plane)
            await write_join_config(lab, node, creds)
            step("kubeadm join")
            await kubeadm_join(lab, node, timeout=left())
            if (
                node.is_control_plane
                and lab.cfg.kubernetes.control_plane_endpoint.mode == "kube-vip"
            ):
                step("kube-vip static pod")
                await install_kube_vip(lab, node)
            if node.is_control_plane:
                step(f"gate on {voters + 1} voters")
                await stable(lab, voters + 1, min(t.cp_stabilize_timeout_seconds, left()), name)
            lab.say(name, f"joined on attempt {attempt}")
            return
        except (OpFailed, SshError, EtcdError) as e:
            if isinstance(e, SshError) and e.kind in ("hostkey", "auth"):
                raise OpFailed(str(e)) from None  # bad input: retrying cannot help
            cause = "{}: {}".format(*classify(str(e)))
            lab.say(name, f"attempt {attempt} failed: {cause}\n    {e}")
            step("undo: kubeadm reset -f, remove its etcd member")
            await forget(lab, node)
        delay = policy.next_delay(attempt, time.monotonic() - t0)
        if delay is None:
            break
        lab.say(name, f"backing off {delay:.1f}s")
        await asyncio.sleep(delay)
    lab.say(name, f"giving up after {attempt} attempt(s); etcd is as before the join. Diagnosis:")
    print(render(await diagnose(lab)), flush=True)
    raise OpFailed(f"{name} did not join after {attempt} attempt(s); last failure: {cause}")


async def stable(lab: Lab, voters: int, timeout: float, who: str) -> None:
    result = await gate(lab, voters, timeout, who=who)
    if not result.ok:
        raise OpFailed("gate failed: " + "; ".join(str(v) for v in result.violations))


async def already_joined(lab: Lab, node: Node) -> bool:
    """A control plane that is a started, healthy voter; a worker that kubectl lists."""
    if not node.is_control_plane:
        try:
            return node.name in await kube_nodes(lab)
        except (OpFailed, SshError):
            return False
    for _ in range(5):  # an election in progress makes a healthy voter look unhealthy briefly
        snap = await lab.snapshot()
        voters = [m for m in snap.members if lab.node_of(m) == node and not m.is_learner]
        if not voters or all(snap.healthy(m) for m in voters):
            return bool(voters)
        await asyncio.sleep(lab.cfg.tuning.gate_poll_interval_seconds)
    raise OpFailed(
        f"{node.name} is a voting member but not healthy; check it with"
        f" `lab diagnose`, or `lab leave {node.name}` and join again"
    )


async def preflight(lab: Lab, node: Node) -> None:
    """cpN -> voters:2380 and cpN -> API:6443 must connect; voters -> cpN:2380 must not be
    filtered (nothing listens there yet, so 'refused' is fine and a timeout is a block)."""
    api = (str(lab.cfg.endpoint_address), str(lab.cfg.endpoint_address), API_PORT)
    if not node.is_control_plane:
        paths = await probe(lab, node, [api])
    else:
        snap = await lab.snapshot()
        voters = [
            n
            for n in lab.topo.control_planes
            if any(lab.node_of(m) == n and not m.is_learner for m in snap.members)
        ]
        outbound = probe(lab, node, [api] + [(v.name, str(v.address), PEER_PORT) for v in voters])
        inbound = [probe(lab, v, [(node.name, str(node.address), PEER_PORT)]) for v in voters]
        results = await asyncio.gather(outbound, *inbound)
        paths = [p for ps in results for p in ps]
    bad = [p for p in paths if (p.source == node.name and not p.ok) or p.blocked]
    if bad:
        blocked = ", ".join(f"{p.name} ({p.error})" for p in bad)
        raise OpFailed(f"preflight: path blocked: {blocked}")


async def forget(lab: Lab, node: Node) -> None:
    """Undo a (partial) join: `kubeadm reset -f` on the node, then remove its etcd member if any."""
    try:
        await kubeadm_reset(lab, node)
    except (OpFailed, SshError) as e:
        lab.say(node.name, f"warning: {e}")
    if not node.is_control_plane:
        return
    etcd = await lab.etcd()
    for m in await etcd.members():
        if lab.node_of(m) == node:
            await etcd.remove_member(m.id)
            lab.say(
                node.name,
                f"removed its etcd member {m.hex_id} ({'learner' if m.is_learner else 'voter'})",
            )
