"""flannel's manifest: the lab's flanneld (built into the node image, never pulled) as a DaemonSet.

flanneld takes each node's pod CIDR from its Node object and carries pod traffic between nodes
over VXLAN; flannel's CNI plugin (in the image, beside Debian's bridge and host-local) reads the
subnet.env flanneld writes. The DaemonSet's init container installs the CNI config, so a node
reports its network ready only once flannel runs there.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from lab.config import LabConfig
from lab.domain_type import DomainType

# Tagged by image/build.sh from image/go/flannel/go.mod; a unit test keeps the two in step.
FLANNEL_VERSION = "v0.28.10"
FLANNEL_IMAGE = f"localhost/k8s-libvirt-lab/flanneld:{FLANNEL_VERSION}"
NAMESPACE = "kube-flannel"
MANIFEST_PATH = "/etc/kubernetes/lab/flannel.yaml"
# Seconds between flanneld's checks of its iptables rules (its --iptables-resync; 5 by default):
# each check runs iptables several times, 5 CPU s a minute of an emulated node (HA run 12).
IPTABLES_RESYNC: dict[DomainType, int] = {"kvm": 5, "qemu": 60}

CNI_CONF = {
    "name": "cbr0",
    "cniVersion": "0.3.1",
    "plugins": [
        {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}


def _meta(name: str, namespaced: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {"app": "flannel"}}
    if namespaced:
        meta["namespace"] = NAMESPACE
    return meta


def manifest(cfg: LabConfig, domain_type: DomainType) -> str:
    api_host, api_port = str(cfg.endpoint_address), str(cfg.endpoint_port)
    net_conf = {"Network": str(cfg.kubernetes.pod_cidr), "Backend": {"Type": "vxlan"}}
    volumes = {
        "run": ("/run/flannel", {"hostPath": {"path": "/run/flannel"}}),
        "cni": ("/etc/cni/net.d", {"hostPath": {"path": "/etc/cni/net.d"}}),
        "xtables-lock": (
            "/run/xtables.lock",
            {"hostPath": {"path": "/run/xtables.lock", "type": "FileOrCreate"}},
        ),
        "flannel-cfg": ("/etc/kube-flannel/", {"configMap": {"name": "kube-flannel-cfg"}}),
    }

    def mounts(*names: str) -> list[dict[str, str]]:
        return [{"name": n, "mountPath": volumes[n][0]} for n in names]

    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": NAMESPACE,
                "labels": {"pod-security.kubernetes.io/enforce": "privileged"},
            },
        },
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta("flannel")},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": _meta("flannel", namespaced=False),
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": _meta("flannel", namespaced=False),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "flannel",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "flannel", "namespace": NAMESPACE}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta("kube-flannel-cfg"),
            "data": {
                "cni-conf.json": json.dumps(CNI_CONF, indent=2),
                "net-conf.json": json.dumps(net_conf, indent=2),
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": _meta("kube-flannel-ds"),
            "spec": {
                "selector": {"matchLabels": {"app": "flannel"}},
                "template": {
                    "metadata": {"labels": {"app": "flannel"}},
                    "spec": {
                        "hostNetwork": True,
                        "priorityClassName": "system-node-critical",
                        "serviceAccountName": "flannel",
                        "tolerations": [{"operator": "Exists", "effect": "NoSchedule"}],
                        "nodeSelector": {"kubernetes.io/os": "linux"},
                        "initContainers": [
                            {
                                "name": "install-cni",
                                "image": FLANNEL_IMAGE,
                                "imagePullPolicy": "Never",
                                "command": ["cp", "-f", "/etc/kube-flannel/cni-conf.json"],
                                "args": ["/etc/cni/net.d/10-flannel.conflist"],
                                "volumeMounts": mounts("cni", "flannel-cfg"),
                            }
                        ],
                        "containers": [
                            {
                                "name": "kube-flannel",
                                "image": FLANNEL_IMAGE,
                                "imagePullPolicy": "Never",
                                "command": ["/usr/local/bin/flanneld"],
                                "args": [f"--iptables-resync={IPTABLES_RESYNC[domain_type]}"],
                                "env": [
                                    {
                                        "name": "NODE_NAME",
                                        "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
                                    },
                                    # The endpoint (the VIP, or cp1), not the service IP: that needs
                                    # kube-proxy, which may start after flannel on a new node.
                                    {"name": "KUBERNETES_SERVICE_HOST", "value": api_host},
                                    {"name": "KUBERNETES_SERVICE_PORT", "value": api_port},
                                ],
                                "resources": {"requests": {"cpu": "50m", "memory": "50Mi"}},
                                "securityContext": {
                                    "privileged": False,
                                    "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]},
                                },
                                "volumeMounts": mounts("run", "flannel-cfg", "xtables-lock"),
                            }
                        ],
                        "volumes": [{"name": n, **v[1]} for n, v in volumes.items()],
                    },
                },
            },
        },
    ]
    return yaml.safe_dump_all(docs, sort_keys=False)
