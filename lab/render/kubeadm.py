"""kubeadm configuration (v1beta4) for init and join.

Every control plane advertises its lab address explicitly: an advertise address picked from the
wrong interface (NAT instead of the lab bridge) is a classic cause of a learner that never syncs.
"""

from __future__ import annotations

from typing import Any

import yaml

from lab.config import LabConfig
from lab.topology import Node

API = "kubeadm.k8s.io/v1beta4"
CRI_SOCKET = "unix:///var/run/containerd/containerd.sock"
INIT_PATH = "/etc/kubernetes/lab/init.yaml"
JOIN_PATH = "/etc/kubernetes/lab/join.yaml"
API_PORT = 6443


def _node_registration(node: Node) -> dict[str, Any]:
    return {
        "name": node.name,
        "criSocket": CRI_SOCKET,
        "kubeletExtraArgs": [{"name": "node-ip", "value": str(node.address)}],
    }


def api_endpoint(cfg: LabConfig) -> str:
    return f"{cfg.endpoint_address}:{API_PORT}"


def init_configuration(cfg: LabConfig, node: Node, all_nodes: list[Node]) -> str:
    """InitConfiguration + ClusterConfiguration for the first control plane."""
    k8s = cfg.kubernetes
    init = {
        "apiVersion": API,
        "kind": "InitConfiguration",
        "localAPIEndpoint": {"advertiseAddress": str(node.address), "bindPort": API_PORT},
        "nodeRegistration": _node_registration(node),
    }
    sans = [str(cfg.endpoint_address)] + [str(n.address) for n in all_nodes if n.is_control_plane]
    cluster = {
        "apiVersion": API,
        "kind": "ClusterConfiguration",
        "clusterName": cfg.cluster.name,
        "kubernetesVersion": f"v{k8s.version}",
        "controlPlaneEndpoint": api_endpoint(cfg),
        "networking": {
            "podSubnet": str(k8s.pod_cidr),
            "serviceSubnet": str(k8s.service_cidr),
            "dnsDomain": "cluster.local",
        },
        "apiServer": {"certSANs": sorted(set(sans))},
    }
    return yaml.safe_dump_all([init, cluster], sort_keys=False)


def join_configuration(
    cfg: LabConfig, node: Node, *, token: str, ca_cert_hash: str, certificate_key: str | None
) -> str:
    """JoinConfiguration with fresh credentials; control planes also get their advertise address.

    Credentials are fetched from cp1 right before each attempt (the certificate key expires after
    2 hours, tokens after 24), so they never sit in Pulumi state or in a file for long.
    """
    join: dict[str, Any] = {
        "apiVersion": API,
        "kind": "JoinConfiguration",
        "discovery": {
            "bootstrapToken": {
                "apiServerEndpoint": api_endpoint(cfg),
                "token": token,
                "caCertHashes": [ca_cert_hash],
            }
        },
        "nodeRegistration": _node_registration(node),
    }
    if node.is_control_plane:
        if not certificate_key:
            raise ValueError(f"{node.name} is a control plane: a certificate key is required")
        join["controlPlane"] = {
            "localAPIEndpoint": {"advertiseAddress": str(node.address), "bindPort": API_PORT},
            "certificateKey": certificate_key,
        }
    return yaml.safe_dump(join, sort_keys=False)


FLANNEL_MANIFEST = (
    "https://github.com/flannel-io/flannel/releases/download/v0.26.7/kube-flannel.yml"
)
FLANNEL_POD_CIDR = "10.244.0.0/16"


def init_script(cfg: LabConfig) -> str:
    """What cp1-init runs on cp1: wait for cloud-init, `kubeadm init` once, then the CNI.

    Idempotent (a second run after success changes nothing), so a re-run of `pulumi up` is safe.
    """
    kubectl = "sudo kubectl --kubeconfig /etc/kubernetes/admin.conf"
    lines = [
        "set -eu",
        # 0 = done, 2 = done with recoverable errors; anything else is a broken node.
        "sudo cloud-init status --wait >/dev/null || [ $? -eq 2 ]",
        "if [ ! -f /etc/kubernetes/admin.conf ]; then",
        f"  sudo kubeadm init --config {INIT_PATH} --upload-certs",
        "fi",
    ]
    if cfg.kubernetes.control_plane_endpoint.mode == "kube-vip":
        # kube-vip needed super-admin.conf while init ran; from now on admin.conf is enough.
        lines.append(
            "sudo sed -i 's#/etc/kubernetes/super-admin.conf#/etc/kubernetes/admin.conf#'"
            " /etc/kubernetes/manifests/kube-vip.yaml"
        )
    if cfg.kubernetes.cni == "flannel":
        lines.append(
            f"curl -fsSL {FLANNEL_MANIFEST} | sed 's#{FLANNEL_POD_CIDR}#{cfg.kubernetes.pod_cidr}#'"
            f" | {kubectl} apply -f -"
        )
    return "\n".join(lines) + "\n"
