"""Serve the control-plane endpoint (mode `vip`): keepalived and haproxy on the control planes.

`lab init` serves it on cp1 before `kubeadm init` (kubeadm reaches its API server through the
endpoint); `lab join` of a control plane serves it on the new node and brings the others'
haproxy up to date, since haproxy lists every control plane of the config. A control plane that
has left stays in the others' lists until the next join; haproxy's health check keeps
connections away from it. A file that is already right is not written again and its service is
not reloaded: the VIP does not move because a join happened.
"""

from __future__ import annotations

import asyncio
import base64
import shlex
from dataclasses import dataclass

from lab.ops.common import Session
from lab.render.cloudinit import INTERFACE
from lab.render.endpoint import (
    CHECK_SCRIPT,
    HAPROXY_CFG,
    KEEPALIVED_CONF,
    check_script,
    haproxy_cfg,
    keepalived_conf,
)
from lab.ssh import SshError
from lab.topology import Node

SERVICES = ("keepalived", "haproxy")


async def serve_endpoint(session: Session, node: Node) -> None:
    """Write this control plane's keepalived and haproxy configuration, start both, and reload
    the one whose configuration changed; one SSH command (each costs seconds on an emulated
    guest)."""
    cfg = session.cfg
    files = {
        CHECK_SCRIPT: ("keepalived", check_script(), 0o755),
        KEEPALIVED_CONF: (
            "keepalived",
            keepalived_conf(cfg, node, INTERFACE, session.domain_type),
            0o644,
        ),
        HAPROXY_CFG: (
            "haproxy",
            haproxy_cfg(cfg, list(session.topo.control_planes), session.domain_type),
            0o644,
        ),
    }
    script = "changed=\n"
    for path, (service, text, mode) in files.items():
        new, data = shlex.quote(f"{path}.lab-new"), base64.b64encode(text.encode()).decode()
        script += (
            f"printf %s {data} | base64 -d >{new} && chmod {mode:o} {new} || exit 1\n"
            f"if cmp -s {new} {shlex.quote(path)}; then rm -f {new};"
            f' else mv -f {new} {shlex.quote(path)} && changed="$changed {service}"; fi\n'
        )
    # The node image enables both (Debian's postinst); `enable` runs the SysV helper even then,
    # 30 s on a loaded emulated guest, so it runs only where they are not enabled.
    services = " ".join(SERVICES)
    script += f"systemctl is-enabled --quiet {services} || systemctl enable --quiet {services}\n"
    script += f"systemctl start {services} || exit 1\n"
    script += "for s in $(printf '%s\\n' $changed | sort -u); do\n"
    script += "  systemctl reload $s || exit 1\ndone\n"
    await session.shell(node).run(script, timeout=60 * session.slowdown, check=True)


async def refresh_others(session: Session, node: Node) -> None:
    """Bring the haproxy of the control planes already in the cluster (etcd's voters) up to
    date; one that does not answer is said, not fatal (it is down, or leaving): the new node
    must not wait for it."""

    async def one(other: Node) -> None:
        try:
            await serve_endpoint(session, other)
        except SshError as e:
            session.say(node.name, f"warning: endpoint on {other.name} not updated: {e}")

    others = [n for n in (await session.snapshot()).voting_nodes if n != node]
    await asyncio.gather(*(one(n) for n in others))


@dataclass(frozen=True)
class EndpointState:
    """One control plane's side of the endpoint: does it hold the VIP, are both services up."""

    node: str
    holds_vip: bool
    services: dict[str, str]  # service -> `systemctl is-active` answer, or the SSH error

    def to_dict(self) -> dict[str, object]:
        return {"node": self.node, "holds_vip": self.holds_vip, "services": self.services}


async def endpoint_states(session: Session) -> list[EndpointState]:
    vip = str(session.cfg.endpoint_address)

    async def one(node: Node) -> EndpointState:
        command = (
            f"ip -o -4 addr show dev {INTERFACE} | grep -qF ' {vip}/' && echo vip || echo -;"
            f" systemctl is-active {' '.join(SERVICES)}"
        )
        try:
            r = await session.shell(node).run(command, sudo=False, timeout=30 * session.slowdown)
        except SshError as e:
            return EndpointState(node.name, False, dict.fromkeys(SERVICES, f"ssh: {e}"))
        lines = r.stdout.split()
        return EndpointState(
            node.name, lines[:1] == ["vip"], dict(zip(SERVICES, lines[1:], strict=False))
        )

    return list(await asyncio.gather(*(one(n) for n in session.topo.control_planes)))
