"""cloud-init user-data and network-config for one node, and its NoCloud seed ISO.

The node image (image/, `make image`) already holds everything a node runs: containerd,
kubeadm, kubelet, kubectl and every container image. cloud-init only configures: the node's
static lab address, the lab user and key, a pinned SSH host key (so the first connection is
already verified), its own /etc/hosts line, and on cp1 kubeadm's patches and flannel's manifest.
Nothing is installed or pulled at boot. Nothing in it names the Kubernetes version: `lab init`
writes kubeadm's configuration, so an upgrade (a changed version) changes no seed and so no
machine.

A node's user data depends on that node alone, never on which other nodes exist: a changed seed
replaces the node's seed volume and machine, so a node list in it would rebuild every machine
when a worker is added. Other nodes' names resolve through the lab network's DNS, which
libvirt updates in place.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from lab.config import LabConfig
from lab.domain_type import DomainType
from lab.render import flannel, kubeadm
from lab.topology import Node, Topology

INTERFACE = "eth0"  # set by network-config from the MAC


def _own_hosts_line(cfg: LabConfig, node: Node) -> str:
    """Its own name on its lab address (not 127.0.1.1): kubeadm and the kubelet look it up."""
    return f"{node.address} {node.name}.{cfg.network.domain} {node.name}\n"


def user_data(
    cfg: LabConfig,
    topo: Topology,
    node: Node,
    *,
    user_key: str,
    host_key: tuple[str, str],
    domain_type: DomainType,
) -> str:
    """The #cloud-config for `node`; host_key is (private PEM, public line) from lab.keys."""
    files: list[dict[str, Any]] = []
    if node == topo.first:
        files += [
            {"path": path, "content": patch}
            for path, patch in kubeadm.emulated_patches(domain_type).items()
        ]
        if cfg.kubernetes.cni == "flannel":
            files.append(
                {"path": flannel.MANIFEST_PATH, "content": flannel.manifest(cfg, domain_type)}
            )
    doc: dict[str, Any] = {
        "hostname": node.name,
        "fqdn": f"{node.name}.{cfg.network.domain}",
        "prefer_fqdn_over_hostname": False,
        "users": [
            {
                "name": cfg.ssh.user,
                "groups": ["sudo"],
                "shell": "/bin/bash",
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "lock_passwd": True,
                "ssh_authorized_keys": [user_key],
            }
        ],
        "ssh_pwauth": False,
        "ssh_deletekeys": True,  # only the pinned key below is offered
        "ssh_keys": {"ed25519_private": host_key[0], "ed25519_public": host_key[1]},
        "runcmd": [f"printf '%s' '{_own_hosts_line(cfg, node)}' >> /etc/hosts"],
    }
    if files:  # cloud-init's schema refuses an empty write_files
        doc["write_files"] = files
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False, width=1000)


def network_config(cfg: LabConfig, node: Node) -> str:
    """netplan v2: the NIC found by its MAC, renamed eth0, with the node's static address."""
    net = cfg.network
    doc = {
        "version": 2,
        "ethernets": {
            INTERFACE: {
                "match": {"macaddress": node.mac},
                "set-name": INTERFACE,
                "addresses": [f"{node.address}/{net.cidr.prefixlen}"],
                "routes": [{"to": "0.0.0.0/0", "via": str(net.gateway_address)}],
                "nameservers": {"addresses": [str(net.gateway_address)], "search": [net.domain]},
            }
        },
    }
    return yaml.safe_dump(doc, sort_keys=False)


def meta_data(node: Node) -> str:
    return yaml.safe_dump({"instance-id": node.name, "local-hostname": node.name})


ISO_TOOL_MISSING = (
    "genisoimage (or mkisofs) is missing: the lab writes each node's cloud-init seed with it"
    " on this host; apt install genisoimage (`make up` does)"
)


class SeedError(Exception):
    """The seed ISO could not be written; the message says why and what to install."""


def iso_tool() -> str | None:
    """The ISO writer on this host: genisoimage, or mkisofs where only that is installed."""
    return shutil.which("genisoimage") or shutil.which("mkisofs")


def seed_iso(cfg: LabConfig, node: Node, user_data: str) -> Path:
    """The node's NoCloud seed, an ISO labelled `cidata`, written into the state folder and
    named by a hash of its files: a changed seed is a new path, so Pulumi replaces the seed
    volume uploaded from it (and the machine), and an unchanged one is not written again.

    The lab writes it rather than the provider's CloudInitDisk: that resource reads its ISO
    back on every refresh through go-libvirt's stream download, which can take a data packet
    for the call's reply and then hold the provider's only libvirt connection forever. The
    file holds the node's private host key, so it is the user's alone, like the keys beside it.
    """
    files = {
        "user-data": user_data,
        "meta-data": meta_data(node),
        "network-config": network_config(cfg, node),
    }
    digest = hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest()[:16]
    folder = (cfg.state_dir / "seeds").resolve()
    path = folder / f"{node.name}-{digest}.iso"
    if path.is_file():
        return path
    tool = iso_tool()
    if tool is None:
        raise SeedError(ISO_TOOL_MISSING)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for old in folder.glob(f"{node.name}-*.iso"):  # an earlier seed of this node
        old.unlink()
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        for name, content in files.items():
            Path(tmp, name).write_text(content)
        partial = Path(tmp, "seed.iso")
        cmd = [tool, "-quiet", "-output", str(partial), "-volid", "cidata", "-joliet", "-rock"]
        out = subprocess.run([*cmd, *files], cwd=tmp, capture_output=True, text=True)
        if out.returncode != 0:
            raise SeedError(f"{tool} failed writing {node.name}'s seed: {out.stderr.strip()}")
        partial.chmod(0o600)
        os.replace(partial, path)
    return path
