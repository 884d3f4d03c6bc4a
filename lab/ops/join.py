"""`lab join <node>`: join a node, retried until it holds or the budget is spent.

One control-plane attempt, at once: preflight (SSH, cpN <-> voters on 2380, cpN -> API endpoint),
undo what an earlier attempt left (remove its member, reset the node, remove stale learners) and
fresh credentials from cp1 (or the next control plane up); then gate on the current voters,
`kubeadm join` (if it failed with its member in etcd: the learner it started promoted here, then
its remaining phases), gate on one more voter. One worker attempt: preflight (API endpoint) and
fresh credentials at once, then `kubeadm join`. After a failed attempt the node's member is
removed and the node reset, then we back off; a final failure leaves etcd as it was (no member
for the node) and prints a diagnosis.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from lab.config import API_PORT
from lab.domain_type import JOIN_BUDGET
from lab.etcd import PEER_PORT, EtcdError
from lab.ops.classify import classify
from lab.ops.cleanup import cleanup_learners
from lab.ops.common import OpFailed, Session, owns
from lab.ops.diagnose import diagnose, render
from lab.ops.endpoint import refresh_others, serve_endpoint
from lab.ops.gate import gate, note
from lab.ops.leader import leader_kept_off
from lab.ops.node import (
    Credentials,
    admin_node,
    fetch_credentials,
    kube_nodes,
    kubeadm_join,
    kubeadm_join_said,
    kubeadm_reset,
    kubectl_until_ok,
    probe,
    stop_kubeadm_join,
    wait_until_reachable,
    write_join_config,
)
from lab.ops.retry import Attempt, Backoff, RetriesExhausted, retry
from lab.ops.upgrade import bring_to_release
from lab.releases import minor_of
from lab.ssh import SshError
from lab.topology import Node


async def join(session: Session, name: str) -> int:
    """Join NAME; returns the attempt that did it (0: it had joined already)."""
    node, t = session.topo.node(name), session.cfg.tuning
    session.say(name, f"waiting for SSH and cloud-init (up to {t.join_max_wait_seconds}s)")
    await wait_until_reachable(session, node, t.join_max_wait_seconds)
    if node.is_control_plane and session.cfg.serves_vip:
        session.say(name, "endpoint: keepalived and haproxy here, haproxy's list on the others")
        await serve_endpoint(session, node)
        await refresh_others(session, node)
    if await already_joined(session, node):
        session.say(name, "already joined and healthy: no-op")
        return 0
    await bring_to_release(session, node)
    one_attempt = join_control_plane if node.is_control_plane else join_worker
    undone = True

    async def undo(attempt: Attempt, error: Exception) -> None:
        nonlocal undone
        if isinstance(error, SshError) and error.kind in ("hostkey", "auth"):
            raise OpFailed(str(error)) from None  # bad input: retrying cannot help
        session.say(name, f"attempt {attempt.number} failed: {cause(error)}\n    {error}")
        progress(session, node, attempt)("undo: remove its etcd member, kubeadm reset -f")
        # An etcd too loaded to answer the undo fails the attempt, not the join: the next
        # attempt begins by removing the same leftovers.
        try:
            await forget(session, node)
            undone = True
        except (OpFailed, SshError, EtcdError) as e:
            undone = False
            session.say(name, f"warning: undo not finished ({e}); the next attempt begins with it")

    try:
        done = await retry(
            lambda attempt: one_attempt(session, node, attempt),
            Backoff.from_tuning(t, JOIN_BUDGET[session.domain_type]),
            retry_on=(OpFailed, SshError, EtcdError),
            undo=undo,
            say=lambda line: session.say(name, line),
        )
    except RetriesExhausted as e:
        etcd_state = (
            "etcd is as before the join"
            if undone
            else f"etcd may still hold its member (`lab join {name}` removes it first)"
        )
        session.say(name, f"giving up after {e.attempts} attempt(s); {etcd_state}. Diagnosis:")
        print(render(await diagnose(session)), file=session.say.stream or sys.stdout, flush=True)
        raise OpFailed(
            f"{name} did not join after {e.attempts} attempt(s); last failure: {cause(e.last)}"
        ) from None
    session.say(name, f"joined on attempt {done.number}")
    return done.number


async def join_control_plane(session: Session, node: Node, attempt: Attempt) -> None:
    step, t = progress(session, node, attempt), session.cfg.tuning
    creds = await prepare(session, node, attempt)
    voters = len((await session.snapshot()).voters)
    step(f"gate on the {voters} current voter(s)")
    await stable(session, voters, min(t.cp_stabilize_timeout_seconds, attempt.left()), node.name)
    async with leader_kept_off(session, node):
        try:
            await write_join_config(session, node, creds)
            step("kubeadm join, its etcd member watched")
            await stopped_once_a_voter(
                session, node, kubeadm_join(session, node, timeout=attempt.left()), voters + 1
            )
        except OpFailed as e:
            await finish_partial_join(session, node, attempt, e)
        step(f"gate on {voters + 1} voters")
        await stable(
            session, voters + 1, min(t.cp_stabilize_timeout_seconds, attempt.left()), node.name
        )


# kubeadm join's phases up to its etcd member's promotion. Each of etcd-join's etcd calls has a
# fixed 2 s limit, so on a slow host kubeadm fails there with work done: (a) its promote went
# through but the reply came late, and every retry gets etcd's "can only promote a learner
# member" (the answer for a voter); (b) it added the learner and wrote etcd's manifest (the
# kubelet starts it), then its member-ID lookup timed out once and it gave up ("context
# deadline exceeded"). Both measured under emulation; resetting throws that work away and meets
# the same limit again. The lab promotes the learner of (b) itself, then runs the phases after
# these for both, with kubeadm's own `--skip-phases`. The etcd member is added in `etcd-join`
# when kubeadm's ControlPlaneKubeletLocalMode is on (its default), in `control-plane-join/etcd`
# when it is off (the emulated profile, lab/render/kubeadm.py): both are skipped, as kubeadm
# skips the one its gate does not run. kubeadm 1.36 removed `control-plane-join/etcd` with the
# gate, and calls the name an "invalid phase name" (HA run 18: a partial join undone, not
# finished): `after_etcd_join` leaves it out from there on.
AFTER_ETCD_JOIN = (
    "preflight",
    "control-plane-prepare",
    "check-etcd",
    "kubelet-start",
    "etcd-join",
    "control-plane-join/etcd",
)
ETCD_MANIFEST = "/etc/kubernetes/manifests/etcd.yaml"
ETCD_SUBPHASE_REMOVED = (1, 36)


def after_etcd_join(version: str) -> tuple[str, ...]:
    """AFTER_ETCD_JOIN as kubeadm `version` names its phases."""
    if minor_of(version) < ETCD_SUBPHASE_REMOVED:
        return AFTER_ETCD_JOIN
    return tuple(p for p in AFTER_ETCD_JOIN if p != "control-plane-join/etcd")


async def finish_partial_join(
    session: Session, node: Node, attempt: Attempt, error: OpFailed
) -> None:
    """Finish a `kubeadm join` that failed with this node's member in etcd (above); re-raise
    `error` when there is nothing to finish, for the retry to undo."""
    step, t = progress(session, node, attempt), session.cfg.tuning
    members = (await session.snapshot()).members_of(node)
    if not members:
        raise error
    if any(m.is_learner for m in members):
        manifest = await session.shell(node).run(
            f"test -f {ETCD_MANIFEST}", timeout=30 * session.slowdown
        )
        if not manifest.ok:
            raise error  # nothing will start the learner: the undo removes it
        step("kubeadm join failed after it added and started this node's learner: promote it")
        session.say(node.name, f"    {error}")
        await promote_when_in_sync(
            session, node, min(t.cp_stabilize_timeout_seconds, attempt.left())
        )
    else:
        step("kubeadm join failed, but etcd made this node a voter: finish it, not reset it")
        session.say(node.name, f"    {error}")
    await remaining_phases(session, node, attempt, error)


# The phases after those, in kubeadm's order (cmd/kubeadm/app/cmd/join.go). Only the first two
# read the cluster's configuration through the endpoint (kubeadm's fixed 10 s per request);
# wait-control-plane asks the node's own API server for /livez.
FINISHING_PHASES = (
    "kubelet-wait-bootstrap",
    "control-plane-join/mark-control-plane",
    "wait-control-plane",
)
REMAINING_PHASES_RUNS = 5
# The failures of those phases that another run may get past: an API request past kubeadm's
# 10 s, the node's own API server not live yet (HA run 13: cp3's, after kubeadm's 20 min), or
# the kubelet's TLS bootstrap not done in kubeadm's wait (HA runs 8 and 19).
RUN_AGAIN = ("api-timeout", "control-plane-not-live", "kubelet-bootstrap")
# What the endpoint must answer, within kubeadm's fixed limit, before another run: HA run 14's
# cp3 ran twice in 64 s while its new member caught up, each run's first request timing out.
ENDPOINT_ANSWERS = "get nodes -o name --request-timeout=10s"


async def remaining_phases(session: Session, node: Node, attempt: Attempt, error: OpFailed) -> None:
    """kubeadm's phases after etcd-join, after `error` (its join's failure with the node a
    voter), run again while one of their API requests passes kubeadm's fixed 10 s (HA e2e run
    5), the node's API server is not live yet or the kubelet's TLS bootstrap outlasts kubeadm's
    wait: undoing a working voter to join it again only loads the cluster more. Each run goes on
    from the phase the failure before it was in (HA run 10: runs 2 and 3 redid finished phases,
    and their configuration fetch timed out; run 20: the whole join reached wait-control-plane),
    and a run after the first only once the endpoint answers within kubeadm's limit again. Any
    other failure, of kubeadm or of what a run needs before it, is the attempt's."""
    step = progress(session, node, attempt)
    base = after_etcd_join(session.cfg.kubernetes.version)
    failure = str(error)
    for run in range(1, REMAINING_PHASES_RUNS + 1):
        again = f", run {run}" if run > 1 else ""
        try:
            if run > 1:
                step("wait until the endpoint answers within kubeadm's 10 s")
                admin = await admin_node(session, besides=node.name)
                await kubectl_until_ok(session, admin, ENDPOINT_ANSWERS, attempt.deadline)
            # Inside the try: its fresh token's request may pass the 10 s too (HA run 26), and
            # then no finishing phase had finished, so the next run's phases are these again.
            skip = await kubelet_start_when_needed(
                session, node, attempt, base + finished_phases(failure)
            )
            step(f"kubeadm join, the remaining phases (--skip-phases={','.join(skip)}){again}")
            await kubeadm_join(session, node, timeout=attempt.left(), skip_phases=skip)
            return
        except (OpFailed, SshError) as e:
            last = run == REMAINING_PHASES_RUNS or attempt.left(at_least=0) < 60
            if last or classify(str(e))[0] not in RUN_AGAIN:
                raise
            session.say(node.name, f"    {e}")
            failure = str(e)


# The credentials the kubelet bootstraps from (kubeadm's kubelet-start writes them, and
# kubelet-wait-bootstrap deletes them as it ends), and its own kubeconfig: the kubelet writes that
# as it starts, naming a client certificate it does not have yet (it bootstraps in the
# background), so the kubeconfig alone is no bootstrapped kubelet (HA run 26: kubelet-start
# skipped, the kubelet restarting on "unable to load bootstrap kubeconfig" for the next run).
KUBELET_CONF = "/etc/kubernetes/kubelet.conf"
BOOTSTRAP_KUBELET_CONF = "/etc/kubernetes/bootstrap-kubelet.conf"
KUBELET_CAN_START = (
    f"test -f {BOOTSTRAP_KUBELET_CONF} || {{ test -f {KUBELET_CONF} &&"
    f" sed -n 's/^ *client-certificate: *//p' {KUBELET_CONF} | xargs -r ls >/dev/null 2>&1; }}"
)


async def kubelet_start_when_needed(
    session: Session, node: Node, attempt: Attempt, skip: tuple[str, ...]
) -> tuple[str, ...]:
    """`skip`, less kubelet-start when a run that waits for the kubelet's bootstrap would find
    nothing it can start from (above): after kubelet-wait-bootstrap ran out (HA runs 8, 19 and
    26), kubeadm had deleted the credentials, and a run with kubelet-start skipped waits out the
    limit again.
    kubelet-start writes them anew from a valid token, and refuses only a Node already Ready: so
    it runs with a fresh token (they live an hour), once this node's own API server answers,
    which the kubelet bootstraps against (kubeadm 1.35 on) and the last phase waits for (HA run
    19: it refused connections for 20 min)."""
    if "kubelet-wait-bootstrap" in skip:
        return skip
    if (await session.shell(node).run(KUBELET_CAN_START, timeout=30 * session.slowdown)).ok:
        return skip
    step = progress(session, node, attempt)
    step("kubeadm deleted the kubelet's bootstrap credentials: wait for this node's API server")
    local = f"--server=https://{node.address}:{API_PORT}"
    await kubectl_until_ok(session, node, f"{local} {ENDPOINT_ANSWERS}", attempt.deadline)
    admin = await admin_node(session, besides=node.name)
    step(f"fresh credentials from {admin.name}, then kubelet-start again")
    creds = await fetch_credentials(session, admin, control_plane=True)
    await write_join_config(session, node, creds)
    return tuple(p for p in skip if p != "kubelet-start")


def finished_phases(error: str) -> tuple[str, ...]:
    """The finishing phases before the one kubeadm's error names ("error execution phase X" or
    "error execution run condition for phase X"): those ran to the end."""
    failed = re.search(r"error execution (?:run condition for )?phase ([\w/-]+)", error)
    name = failed.group(1) if failed else ""
    for done, phase in enumerate(FINISHING_PHASES):
        if name.split("/")[0] == phase.split("/")[0]:
            return FINISHING_PHASES[:done]
    return ()


async def promote_when_in_sync(session: Session, node: Node, timeout: float) -> None:
    """Promote the node's learner once etcd accepts: until the learner has started and caught
    up, etcd refuses ("can only promote a learner member which is in sync with leader")."""
    began = time.monotonic()
    interval = session.poll_interval
    for refusals in itertools.count():
        learners = [m for m in (await session.snapshot()).members_of(node) if m.is_learner]
        if not learners:  # kubeadm's last retry, or a promote whose reply was lost (HA run 10)
            session.say(node.name, "its learner is a voter now: promoted meanwhile")
            return
        try:
            await (await session.etcd()).promote(learners[0].id)
            took = time.monotonic() - began
            session.say(node.name, f"promoted its learner {learners[0].hex_id} after {took:.0f}s")
            return
        except EtcdError as e:
            if time.monotonic() - began > timeout:
                raise OpFailed(
                    f"{node.name}: its learner was not promoted in {timeout:.0f}s: {e}"
                ) from None
            if refusals == 0:
                session.say(
                    node.name,
                    f"etcd refuses the promote ({e}); asking every {interval:g}s,"
                    f" up to {timeout:.0f}s",
                )
        await asyncio.sleep(interval)


async def join_worker(session: Session, node: Node, attempt: Attempt) -> None:
    creds = await prepare(session, node, attempt)
    await write_join_config(session, node, creds)
    progress(session, node, attempt)("kubeadm join")
    await kubeadm_join(session, node, timeout=attempt.left())


async def prepare(session: Session, node: Node, attempt: Attempt) -> Credentials:
    """An attempt's preflight, (a control plane) the leftovers of an earlier one removed, and a
    fresh token (and certificate key: they expire) from the admin node, all at once: none needs
    another's result, and each is a few SSH round trips to a different node."""
    admin, cp = await admin_node(session), node.is_control_plane
    parts = ["preflight (SSH, API endpoint" + (", peer port 2380 both ways)" if cp else ")")]
    if cp:
        parts.append("remove leftovers (its etcd member, kubeadm reset -f, stale learners)")
    parts.append(f"fresh credentials from {admin.name}")
    progress(session, node, attempt)("at once: " + "; ".join(parts))
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(preflight(session, node))
            if cp:
                group.create_task(remove_leftovers(session, node))
            creds = group.create_task(fetch_credentials(session, admin, control_plane=cp))
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None  # the attempt's failure, for the retry to classify
    return creds.result()


async def remove_leftovers(session: Session, node: Node) -> None:
    await forget(session, node)
    await cleanup_learners(session, node.name)


# HA runs 9, 15 and 16: kubeadm's promote went through, its reply did not come back within
# kubeadm's fixed 2 s, and kubeadm asked again about once a second, each refused with "can only
# promote a learner member" (etcd's answer for a voter) and each a raft entry, until its
# etcdAPICall timeout (20 min under emulation). kubeadm prints PROMOTED as soon as its promote
# returns; a voter whose kubeadm has not printed it a few seconds on is stuck there, and is
# stopped: the remaining phases finish the node (run 16: 5 s, after 180 s of waiting on a fixed
# grace). A kubeadm that printed it is left to finish.
PROMOTED = "[etcd] Waiting for the new etcd member to join the cluster"
VOTER_GRACE_SECONDS = 5


async def stopped_once_a_voter(
    session: Session, node: Node, join: Coroutine[Any, Any, None], voters: int
) -> None:
    """(Above.) Each look is also a gate's poll at `voters`: the gate after the join counts its
    window from the first stable one, while kubeadm's last phases run."""
    grace = VOTER_GRACE_SECONDS * session.slowdown
    interval = max(session.poll_interval, session.gate_window / 2)  # 1 s under KVM, 5 s emulated
    task = asyncio.ensure_future(join)
    voter_since: float | None = None
    try:
        while not (await asyncio.wait({task}, timeout=interval))[0]:
            try:
                snap = await session.snapshot()
            except (OpFailed, EtcdError):
                continue  # a loaded etcd: ask again next time
            note(session, snap, voters)
            members = snap.members_of(node)
            is_voter = bool(members) and not any(m.is_learner for m in members)
            voter_since = (voter_since or time.monotonic()) if is_voter else None
            if voter_since is None or time.monotonic() - voter_since < grace:
                continue
            try:
                if await kubeadm_join_said(session, node, PROMOTED):
                    break  # past its promote: kubeadm goes on by itself
            except SshError:
                continue
            await stop_kubeadm_join(session, node)
            await asyncio.wait({task}, timeout=30 * session.slowdown)  # its output kept
            raise OpFailed(
                f"{node.name}: its etcd member has been a voter for {grace:.0f}s and kubeadm"
                " join has not said its promote returned (one whose reply was lost is retried"
                " until kubeadm's etcdAPICall timeout): stopped it"
            )
        await task
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def progress(session: Session, node: Node, attempt: Attempt) -> Callable[[str], None]:
    """Say one step of an attempt: `cp2: attempt 2/8: kubeadm join`."""
    return lambda what: session.say(node.name, f"attempt {attempt.number}/{attempt.of}: {what}")


def cause(error: Exception) -> str:
    return "{}: {}".format(*classify(str(error)))


async def stable(session: Session, voters: int, timeout: float, who: str) -> None:
    result = await gate(session, voters, timeout, who=who)
    if not result.ok:
        raise OpFailed("gate failed: " + "; ".join(str(v) for v in result.violations))


async def already_joined(session: Session, node: Node) -> bool:
    """A control plane that is a started, healthy voter; a worker that kubectl lists."""
    if not node.is_control_plane:
        try:
            return node.name in await kube_nodes(session)
        except (OpFailed, SshError):
            return False
    for _ in range(5):  # an election in progress makes a healthy voter look unhealthy briefly
        snap = await session.snapshot()
        voters = [m for m in snap.members_of(node) if not m.is_learner]
        if not voters or all(snap.healthy(m) for m in voters):
            return bool(voters)
        await asyncio.sleep(session.poll_interval)
    raise OpFailed(
        f"{node.name} is a voting member but not healthy; check it with"
        f" `lab diagnose`, or `lab leave {node.name}` and join again"
    )


async def preflight(session: Session, node: Node) -> None:
    """cpN -> voters:2380 and cpN -> the API endpoint must connect; voters -> cpN:2380 must not be
    filtered (nothing listens there yet, so 'refused' is fine and a timeout is a block)."""
    endpoint, port = str(session.cfg.endpoint_address), session.cfg.endpoint_port
    api = (endpoint, endpoint, port)
    if not node.is_control_plane:
        paths = await probe(session, node, [api])
    else:
        # The node itself is a voter still when an undo could not remove its member.
        voters = [v for v in (await session.snapshot()).voting_nodes if v != node]
        outbound = probe(
            session, node, [api] + [(v.name, str(v.address), PEER_PORT) for v in voters]
        )
        inbound = [probe(session, v, [(node.name, str(node.address), PEER_PORT)]) for v in voters]
        results = await asyncio.gather(outbound, *inbound)
        paths = [p for ps in results for p in ps]
    bad = [p for p in paths if (p.source == node.name and not p.ok) or p.blocked]
    if bad:
        blocked = ", ".join(f"{p.name} ({p.error})" for p in bad)
        raise OpFailed(f"preflight: path blocked: {blocked}")


async def forget(session: Session, node: Node) -> None:
    """Undo a (partial) join: remove the node's etcd member, then `kubeadm reset -f` it. In that
    order: reset wipes the member's data even when kubeadm could not remove it (HA e2e: its API
    calls timed out), and a voter of two wiped before its removal takes the quorum with it. An
    etcd that does not answer raises before the reset, so the member keeps running."""
    if node.is_control_plane:
        etcd = await session.etcd()
        for m in await etcd.members():
            if owns(node, m):
                await etcd.remove_member(m.id)
                kind = "learner" if m.is_learner else "voter"
                session.say(node.name, f"removed its etcd member {m.hex_id} ({kind})")
    try:
        await kubeadm_reset(session, node)
    except (OpFailed, SshError) as e:
        session.say(node.name, f"warning: {e}")
