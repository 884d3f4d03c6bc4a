"""`lab init`: the first control plane's endpoint (keepalived, haproxy), its `kubeadm init`, then
the CNI.

kubeadm init runs on the node in the background, its output and exit status going to files, and
`lab` polls it over SSH: a connection dropped mid-init (seen with loaded emulated guests) costs a
reconnect instead of the cluster. Idempotent: a finished init is not run again, one still running
is waited for, and a failed one is reset and run again.
"""

from __future__ import annotations

import asyncio
import shlex
import time

from lab.ops.common import OpFailed, Session
from lab.ops.endpoint import serve_endpoint
from lab.ops.node import KUBECONFIG, gist, kubeadm_reset, kubectl_until_ok, wait_until_reachable
from lab.render import flannel
from lab.render.kubeadm import INIT_PATH
from lab.ssh import SshError
from lab.topology import Node

INIT_COMMAND = f"kubeadm init --config {INIT_PATH} --upload-certs"
LOG = "/etc/kubernetes/lab/init.log"
STATUS = "/etc/kubernetes/lab/init.status"  # kubeadm init's exit status, once it has ended
PID = "/etc/kubernetes/lab/init.pid"
POLL_SECONDS = 5.0


async def init(session: Session) -> None:
    node, t = session.topo.first, session.cfg.tuning
    deadline = time.monotonic() + t.join_max_wait_seconds + t.cp_stabilize_timeout_seconds

    def say(line: str) -> None:
        session.say(node.name, line)

    say(f"waiting for SSH and cloud-init (up to {t.join_max_wait_seconds}s)")
    await wait_until_reachable(session, node, t.join_max_wait_seconds)
    say("SSH answers and cloud-init is done")
    if session.cfg.serves_vip:
        await serve_endpoint(session, node)
        say(f"endpoint {session.cfg.endpoint_address}:{session.cfg.endpoint_port} served")
    state = await init_state(session, node)
    if state not in ("done", "running"):
        if state == "failed":
            say("the last kubeadm init failed: kubeadm reset -f, then init again")
            await kubeadm_reset(session, node)
        say(f"kubeadm init (in the background; its output in {LOG})")
        await start_init(session, node)
    elif state == "running":
        say("kubeadm init is already running: waiting for it")
    if state != "done":
        await wait_for_init(session, node, deadline)
    say("kubeadm init done")
    if session.cfg.kubernetes.cni == "flannel":
        applied = await kubectl_until_ok(
            session, node, f"apply -f {flannel.MANIFEST_PATH}", deadline
        )
        print(applied, end="", flush=True)
        say("flannel applied")


async def init_state(session: Session, node: Node) -> str:
    """done | running | failed | none. A cluster initialised before `lab init` kept its status
    (admin.conf, no status file) counts as done."""
    r = await session.shell(node).run(
        f'if [ -f {STATUS} ]; then [ "$(cat {STATUS})" = 0 ] && echo done || echo failed;'
        f' elif [ -f {PID} ] && kill -0 "$(cat {PID})" 2>/dev/null; then echo running;'
        f" elif [ -f {KUBECONFIG} ]; then echo done; else echo none; fi",
        timeout=30 * session.slowdown,
        check=True,
    )
    return r.stdout.strip()


async def start_init(session: Session, node: Node) -> None:
    """kubeadm init detached from the SSH session (setsid, nohup): it outlives a dropped one."""
    body = f"{INIT_COMMAND} >{LOG} 2>&1; echo $? >{STATUS}.tmp && mv {STATUS}.tmp {STATUS}"
    await session.shell(node).run(
        f"mkdir -p {shlex.quote(LOG.rsplit('/', 1)[0])} && rm -f {STATUS}"
        f" && setsid nohup sh -c {shlex.quote(body)} >/dev/null 2>&1 </dev/null &"
        f" echo $! >{PID}",
        timeout=30 * session.slowdown,
        check=True,
    )


async def wait_for_init(session: Session, node: Node, deadline: float) -> None:
    sh, status = session.shell(node), ""
    while not status:
        try:
            r = await sh.run(f"cat {STATUS} 2>/dev/null", timeout=30 * session.slowdown)
            status = r.stdout.strip()
            if status:
                break
        except SshError as e:
            session.say(node.name, f"SSH failed while waiting ({e}); trying again")
        if time.monotonic() > deadline:
            raise OpFailed(f"{node.name}: kubeadm init did not finish in time; see {LOG} there")
        await asyncio.sleep(POLL_SECONDS * session.slowdown)
    log = (await sh.run(f"cat {LOG}", timeout=30 * session.slowdown)).stdout
    print(log, end="", flush=True)  # kubeadm's own account, as if it had run here
    if status != "0":
        raise OpFailed(f"{node.name}: kubeadm init failed (exit {status}): {gist(log)}")
