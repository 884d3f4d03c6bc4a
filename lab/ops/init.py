"""`lab init`: the first control plane's endpoint (keepalived, haproxy), its `kubeadm init`, then
the CNI.

kubeadm init runs on the node detached (lab.ops.detached). Idempotent: a finished init is not run
again, one still running is waited for, and a failed one is reset and run again.
"""

from __future__ import annotations

import asyncio
import time

from lab.ops.common import Session
from lab.ops.detached import Detached, State
from lab.ops.endpoint import serve_endpoint
from lab.ops.gate import note_stable
from lab.ops.node import KUBECONFIG, kubeadm_reset, kubectl_until_ok, wait_until_reachable
from lab.render import flannel
from lab.render.kubeadm import INIT_PATH, init_configuration
from lab.topology import Node

INIT_COMMAND = f"kubeadm init --config {INIT_PATH} --upload-certs"
INIT = Detached("init")


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
    if state == "failed":
        say("the last kubeadm init failed: kubeadm reset -f, then init again")
        await kubeadm_reset(session, node)
    if state != "done":
        init_yaml = init_configuration(session.cfg, node, session.domain_type)
        await session.shell(node).write_file(INIT_PATH, init_yaml.encode(), mode=0o600)
        log = await INIT.run(session, node, INIT_COMMAND, deadline, "kubeadm init")
        print(log, end="", flush=True)  # kubeadm's own account, as if it had run here
    say("kubeadm init done")
    if session.cfg.kubernetes.cni == "flannel":
        # The gate's first poll while flannel is applied: its window runs meanwhile.
        applied, _ = await asyncio.gather(
            kubectl_until_ok(session, node, f"apply -f {flannel.MANIFEST_PATH}", deadline),
            note_stable(session, voters=1),
        )
        print(applied, end="", flush=True)
        say("flannel applied")
    else:
        await note_stable(session, voters=1)


async def init_state(session: Session, node: Node) -> State:
    """A cluster initialised before `lab init` kept its status (admin.conf, no status file)
    counts as done."""
    state = await INIT.state(session, node)
    if state == "none" and (await session.shell(node).run(f"test -f {KUBECONFIG}")).ok:
        return "done"
    return state
