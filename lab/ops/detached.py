"""A long kubeadm command (init, upgrade apply, upgrade node) run on a node detached from the SSH
session, its output and exit status going to files there, and polled over SSH: a connection
dropped mid-command (seen with loaded emulated guests) costs a reconnect, not the cluster.
Idempotent by its files: a finished run is not started again, one still running is waited for.
Each SSH call of the wait looks for the exit status on the node every second, for up to a minute:
the end is seen within a second (polling every 5 s times the slowdown added up to 30 s to every
`kubeadm init` under emulation), at one SSH call a minute.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from dataclasses import dataclass
from typing import Literal

from lab.ops.common import OpFailed, Session
from lab.ops.node import gist
from lab.ssh import SshError
from lab.topology import Node

DIR = "/etc/kubernetes/lab"
WAIT_SECONDS = 60  # one SSH call's wait on the node
RETRY_SECONDS = 5.0  # after a failed SSH call, times the slowdown
State = Literal["done", "running", "failed", "none"]


@dataclass(frozen=True)
class Detached:
    """One named command's files on the node: NAME.log, NAME.status (its exit status, once it has
    ended) and NAME.pid."""

    name: str

    @property
    def log(self) -> str:
        return f"{DIR}/{self.name}.log"

    @property
    def status(self) -> str:
        return f"{DIR}/{self.name}.status"

    @property
    def pid(self) -> str:
        return f"{DIR}/{self.name}.pid"

    async def state(self, session: Session, node: Node) -> State:
        r = await session.shell(node).run(
            f'if [ -f {self.status} ]; then [ "$(cat {self.status})" = 0 ] && echo done'
            f' || echo failed; elif [ -f {self.pid} ] && kill -0 "$(cat {self.pid})"'
            " 2>/dev/null; then echo running; else echo none; fi",
            timeout=30 * session.slowdown,
            check=True,
        )
        state = r.stdout.strip()
        assert state in ("done", "running", "failed", "none"), state
        return state  # type: ignore[return-value]

    async def start(self, session: Session, node: Node, command: str) -> None:
        """Start `command` detached (setsid, nohup): it outlives a dropped SSH session."""
        status = self.status
        body = f"{command} >{self.log} 2>&1; echo $? >{status}.tmp && mv {status}.tmp {status}"
        await session.shell(node).run(
            f"mkdir -p {DIR} && rm -f {self.status}"
            f" && setsid nohup sh -c {shlex.quote(body)} >/dev/null 2>&1 </dev/null &"
            f" echo $! >{self.pid}",
            timeout=30 * session.slowdown,
            check=True,
        )

    async def wait(self, session: Session, node: Node, deadline: float, what: str) -> str:
        """Wait for the run to end; its log, or OpFailed naming `what` and kubeadm's error."""
        sh, status = session.shell(node), ""
        look = (
            f"for i in $(seq {WAIT_SECONDS}); do [ -s {self.status} ] && break; sleep 1; done;"
            f" cat {self.status} 2>/dev/null"
        )
        while not status:
            try:
                r = await sh.run(look, timeout=WAIT_SECONDS + 30 * session.slowdown)
                status = r.stdout.strip()
                if status:
                    break
            except SshError as e:
                session.say(node.name, f"SSH failed while waiting ({e}); trying again")
                await asyncio.sleep(RETRY_SECONDS * session.slowdown)
            if time.monotonic() > deadline:
                raise OpFailed(f"{node.name}: {what} did not finish in time; see {self.log} there")
        log = (await sh.run(f"cat {self.log}", timeout=30 * session.slowdown)).stdout
        if status != "0":
            raise OpFailed(f"{node.name}: {what} failed (exit {status}): {gist(log)}")
        return log

    async def run(
        self, session: Session, node: Node, command: str, deadline: float, what: str
    ) -> str:
        """Start `command` unless a run of it is going on or done, wait for it, return its log;
        a failed earlier run is started again."""
        state = await self.state(session, node)
        if state == "running":
            session.say(node.name, f"{what} is already running: waiting for it")
        elif state != "done":
            session.say(node.name, f"{what} (in the background; its output in {self.log})")
            await self.start(session, node, command)
        return await self.wait(session, node, deadline, what)
