"""`lab preflight`: what this host needs before `pulumi up`, each problem with its fix.

Pulumi would report the same problems, later and in the provider's words (`dial unix
/var/run/libvirt/libvirt-sock: connect: no such file or directory`); this says what to do.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from lab.config import LabConfig
from lab.render.cloudinit import ISO_TOOL_MISSING, iso_tool
from lab.render.domain import XSLT_TOOL_MISSING, xslt_tool

# Where libvirt listens for qemu:///system: the monolithic daemon, or the modular virtqemud.
SYSTEM_SOCKETS = ("/var/run/libvirt/libvirt-sock", "/run/libvirt/virtqemud-sock")


def libvirt_socket_problem(
    uri: str, system_sockets: tuple[str, ...] = SYSTEM_SOCKETS
) -> str | None:
    """A local libvirt URI whose socket is missing; remote URIs are left to the provider."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("qemu", "qemu+unix") or parsed.hostname:
        return None
    given = parse_qs(parsed.query).get("socket")
    if given:
        candidates: tuple[str, ...] = (given[0],)
    elif parsed.path == "/system":
        candidates = system_sockets
    else:
        return None  # qemu:///session starts its own daemon
    if any(Path(s).exists() for s in candidates):
        return None
    return (
        f"libvirt is not running at {uri} (no socket at {' or '.join(candidates)}):"
        " start it (systemctl enable --now libvirtd), let the lab run its own"
        " (lab libvirtd start; `make up` does), or set libvirt.uri in config/cluster.yaml"
    )


# What a cold `make image` took here (image/README.md): said where the image is not built yet.
IMAGE_BUILD_TIME = "about 8 min here the first time, most of it compiling Kubernetes"


def image_missing(cfg: LabConfig) -> str | None:
    """The lab's own node image of kubernetes.version, when it is not built yet."""
    if cfg.image.source is None and not Path(cfg.image_source).is_file():
        return cfg.image_source
    return None


def host_problems(cfg: LabConfig, kvm: Path = Path("/dev/kvm"), *, image: bool = True) -> list[str]:
    """What stops `pulumi up` on this host, each with its fix; `image=False` for a preview, which
    needs no node image."""
    problems = []
    if (p := libvirt_socket_problem(cfg.libvirt.uri)) is not None:
        problems.append(p)
    if cfg.libvirt.domain_type == "kvm" and not kvm.exists():
        problems.append(
            f"KVM is not available ({kvm} is missing): enable virtualisation in the firmware"
            " and load kvm_intel or kvm_amd, or set libvirt.domain_type to auto or qemu"
        )
    if image and (missing := image_missing(cfg)):
        problems.append(
            f"the node image {missing} is missing: build it with `make image`"
            f" (`make up` does; {IMAGE_BUILD_TIME})"
        )
    if iso_tool() is None:
        problems.append(ISO_TOOL_MISSING)
    if xslt_tool() is None:
        problems.append(XSLT_TOOL_MISSING)
    return problems


def on_link(address: str) -> bool:
    """Whether `address` is reached directly, not through a gateway (`ip route get` sends
    nothing): the lab's guests are on a link only where its network is (its namespace)."""
    route = subprocess.run(["ip", "-j", "route", "get", address], capture_output=True, text=True)
    return route.returncode == 0 and "gateway" not in json.loads(route.stdout)[0]
