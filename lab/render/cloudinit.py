"""cloud-init user-data and network-config for one node.

The node comes up with its static lab address, the lab user and key, a pinned SSH host key (so the
first connection is already verified), the kernel settings kubeadm's preflight wants, containerd,
and kubeadm/kubelet/kubectl of the chosen version. Control planes also get their kubeadm
configuration (cp1) and, in kube-vip mode, cp1's kube-vip static pod.
"""

from __future__ import annotations

from typing import Any

import yaml

from lab.config import LabConfig
from lab.render import kubeadm
from lab.topology import Node, Topology

INTERFACE = "eth0"  # set by network-config from the MAC, so kube-vip can name it
KUBE_VIP_IMAGE = "ghcr.io/kube-vip/kube-vip:v0.8.9"
KUBE_VIP_PATH = "/etc/kubernetes/manifests/kube-vip.yaml"

SYSCTLS = """\
net.bridge.bridge-nf-call-iptables  = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.ipv4.ip_forward                 = 1
"""


def _hosts(cfg: LabConfig, topo: Topology) -> str:
    """/etc/hosts lines for every node: name resolution must not depend on the lab's DNS."""
    domain = cfg.network.domain
    return "".join(f"{n.address} {n.name}.{domain} {n.name}\n" for n in topo.nodes)


def _install_kubernetes(cfg: LabConfig) -> list[str]:
    minor = cfg.kubernetes.minor
    repo = f"https://pkgs.k8s.io/core:/stable:/v{minor}/deb/"
    keyring = "/etc/apt/keyrings/kubernetes-apt-keyring.gpg"
    pkg = f"{cfg.kubernetes.version}-*"
    return [
        "mkdir -p /etc/apt/keyrings",
        f"curl -fsSL {repo}Release.key | gpg --dearmor --yes -o {keyring}",
        f"echo 'deb [signed-by={keyring}] {repo} /' > /etc/apt/sources.list.d/kubernetes.list",
        "apt-get update -q",
        f"apt-get install -y -q kubelet={pkg} kubeadm={pkg} kubectl={pkg}",
        "apt-mark hold kubelet kubeadm kubectl",
        "systemctl enable --now kubelet",
    ]


def kube_vip_manifest(cfg: LabConfig, node: Node) -> str:
    """kube-vip static pod (ARP mode). cp1 uses super-admin.conf: admin.conf has no rights yet
    while `kubeadm init` runs (Kubernetes >= 1.29)."""
    kubeconfig = "super-admin.conf" if node.name == "cp1" else "admin.conf"
    env = {
        "vip_arp": "true",
        "port": str(kubeadm.API_PORT),
        "vip_interface": INTERFACE,
        "cp_enable": "true",
        "vip_leaderelection": "true",
        "address": str(cfg.endpoint_address),
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kube-vip", "namespace": "kube-system"},
        "spec": {
            "hostNetwork": True,
            "containers": [
                {
                    "name": "kube-vip",
                    "image": KUBE_VIP_IMAGE,
                    "args": ["manager"],
                    "env": [{"name": k, "value": v} for k, v in env.items()],
                    "securityContext": {"capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}},
                    "volumeMounts": [
                        {"mountPath": "/etc/kubernetes/admin.conf", "name": "kubeconfig"}
                    ],
                }
            ],
            "volumes": [
                {"name": "kubeconfig", "hostPath": {"path": f"/etc/kubernetes/{kubeconfig}"}}
            ],
        },
    }
    return yaml.safe_dump(pod, sort_keys=False)


def user_data(
    cfg: LabConfig, topo: Topology, node: Node, *, user_key: str, host_key: tuple[str, str]
) -> str:
    """The #cloud-config for `node`; host_key is (private PEM, public line) from lab.keys."""
    files: list[dict[str, Any]] = [
        {"path": "/etc/modules-load.d/kubernetes.conf", "content": "overlay\nbr_netfilter\n"},
        {"path": "/etc/sysctl.d/99-kubernetes.conf", "content": SYSCTLS},
    ]
    # Only cp1 gets kube-vip from cloud-init: `kubeadm init` accepts an extra static pod, but
    # `kubeadm join` refuses a non-empty manifests folder, so `lab join` adds it after the join.
    if node == topo.first:
        files.append(
            {
                "path": kubeadm.INIT_PATH,
                "content": kubeadm.init_configuration(cfg, node, list(topo.nodes)),
                "permissions": "0600",
            }
        )
        if cfg.kubernetes.control_plane_endpoint.mode == "kube-vip":
            files.append({"path": KUBE_VIP_PATH, "content": kube_vip_manifest(cfg, node)})
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
        "write_files": files,
        "package_update": True,
        "packages": [
            "qemu-guest-agent",
            "containerd",
            "apt-transport-https",
            "ca-certificates",
            "curl",
            "gpg",
            "socat",
            "conntrack",
        ],
        "runcmd": [
            f"printf '%s' '{_hosts(cfg, topo)}' >> /etc/hosts",
            "swapoff -a",
            "sed -i '/\\sswap\\s/ s/^/#/' /etc/fstab",
            "modprobe overlay",
            "modprobe br_netfilter",
            "sysctl --system",
            "mkdir -p /etc/containerd",
            "containerd config default | sed 's/SystemdCgroup = false/SystemdCgroup = true/'"
            " > /etc/containerd/config.toml",
            "systemctl restart containerd",
            "systemctl enable --now qemu-guest-agent",
            *_install_kubernetes(cfg),
        ],
    }
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
                "routes": [{"to": "default", "via": str(net.gateway_address)}],
                "nameservers": {"addresses": [str(net.gateway_address)], "search": [net.domain]},
            }
        },
    }
    return yaml.safe_dump(doc, sort_keys=False)


def meta_data(node: Node) -> str:
    return yaml.safe_dump({"instance-id": node.name, "local-hostname": node.name})
