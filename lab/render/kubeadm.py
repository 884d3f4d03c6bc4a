"""kubeadm configuration (v1beta4) for init and join.

Every control plane advertises its lab address explicitly: an advertise address picked from the
wrong interface (NAT instead of the lab bridge) is a classic cause of a learner that never syncs.
"""

from __future__ import annotations

from typing import Any

import yaml

from lab.config import API_PORT, LabConfig
from lab.domain_type import ELECTION_TIMEOUT_SECONDS, DomainType
from lab.releases import Release, minor_of
from lab.topology import Node

API = "kubeadm.k8s.io/v1beta4"
CRI_SOCKET = "unix:///var/run/containerd/containerd.sock"
INIT_PATH = "/etc/kubernetes/lab/init.yaml"
JOIN_PATH = "/etc/kubernetes/lab/join.yaml"

# Under software emulation (domain type qemu) kubeadm's default timeouts are too short: a
# control-plane join between two emulated guests failed after ~190 s, leaving its learner. These
# are the values that let joins finish there (docs/emulation.md).
EMULATED_TIMEOUTS = {
    "controlPlaneComponentHealthCheck": "20m0s",
    "kubeletHealthCheck": "20m0s",
    "kubernetesAPICall": "10m0s",
    "etcdAPICall": "20m0s",
    "tlsBootstrap": "20m0s",
    "discovery": "20m0s",
}
# etcd's default heartbeat (100 ms) and election timeout (1 s) made emulated members churn
# through elections; set at init, they hold for every member that joins later.
EMULATED_ETCD = {
    "heartbeat-interval": f"{ELECTION_TIMEOUT_SECONDS['qemu'] * 100:.0f}",
    "election-timeout": f"{ELECTION_TIMEOUT_SECONDS['qemu'] * 1000:.0f}",
}
# kube-controller-manager and kube-scheduler renew their leader lease every 2 s, within 10 s, by
# requests of 5 s: an emulated API server answers slower, they lose the lease and restart, over
# and over, and a new node's certificate request waits unapproved. Four times as long holds.
EMULATED_LEADER_ELECTION = {
    "leader-elect-lease-duration": "60s",
    "leader-elect-renew-deadline": "40s",
    "leader-elect-retry-period": "8s",
}
# A starting kube-controller-manager gives its API server's /healthz 10 s (fixed), and /healthz
# fails its etcd check after 2 s: on a loaded emulated etcd the controller manager that had won
# the lease exited and started again for minutes (HA e2e), approving no node's certificate.
EMULATED_API_SERVER = {"etcd-healthcheck-timeout": "30s", "etcd-readycheck-timeout": "30s"}
# kubeadm 1.33+ (ControlPlaneKubeletLocalMode, on by default) has a joining control plane's
# kubelet bootstrap against that node's own API server, after etcd-join: the slowest thing to
# come up on a loaded emulated guest, which needs its new etcd member caught up first. HA run 8:
# cp2's learner promoted, then 21 min in kubelet-wait-bootstrap, and a voter to undo. Off, the
# kubelet bootstraps through the endpoint (the API servers already up) in kubelet-start, before
# etcd is touched, and etcd's member is kubeadm's last step but marking the node. kubeadm 1.35
# locks the gate on (GA) and 1.36 removes it: there the join goes the local way, and `lab join`
# finishes a join whose kubelet bootstrap outlasts kubeadm (lab.ops.join).
EMULATED_FEATURE_GATES = {"ControlPlaneKubeletLocalMode": False}
LOCAL_MODE_LOCKED = (1, 35)
# The kubelet was an emulated control plane's busiest process at rest (27 CPU s a minute, HA run
# 12); its container statistics, gathered every 10 s by default, are only read for evictions and
# `kubectl top` here.
EMULATED_KUBELET = {"housekeeping-interval": "1m0s"}


def _node_registration(node: Node, domain_type: DomainType) -> dict[str, Any]:
    kubelet = {"node-ip": str(node.address)}
    if domain_type == "qemu":
        kubelet |= EMULATED_KUBELET
    registration: dict[str, Any] = {
        "name": node.name,
        "criSocket": CRI_SOCKET,
        "kubeletExtraArgs": _args(kubelet),
    }
    # kubeadm wants 2 CPUs on a control plane; `control_plane.cpus: 1` is a small host's choice
    # (measured here: slower, docs/emulation.md), so kubeadm is told to accept it.
    if node.is_control_plane and node.cpus < 2:
        registration["ignorePreflightErrors"] = ["NumCPU"]
    return registration


# The kubelet restarts a control-plane pod whose probe times out (15 s) a few times in a row: an
# emulated, loaded guest answers that slowly, and the restarts feed the load (a restarted API
# server re-lists everything, and every client re-lists from it). kubeadm's patches (strategic
# merge, one file per target) give every probe of theirs a minute and a longer period, and the
# liveness probe 10 min of failures before a restart instead of 80 s.
PATCHES_DIR = "/etc/kubernetes/lab/patches"
SLOW_PROBE = {"timeoutSeconds": 60, "periodSeconds": 30}
SLOW_LIVENESS = SLOW_PROBE | {"failureThreshold": 20}
EMULATED_PROBES = {
    "etcd": ("livenessProbe", "startupProbe"),
    "kube-apiserver": ("livenessProbe", "readinessProbe", "startupProbe"),
    "kube-controller-manager": ("livenessProbe", "startupProbe"),
    "kube-scheduler": ("livenessProbe", "startupProbe"),
}
# kubeadm init deploys two CoreDNS replicas, both on cp1 until another node is Ready: 13 CPU s a
# minute of an emulated cp1 at rest (HA run 12). One serves a lab; kubeadm keeps the count later.
EMULATED_COREDNS = {"spec": {"replicas": 1}}


def emulated_patches(domain_type: DomainType) -> dict[str, str]:
    """Path -> content of the kubeadm patch files the control planes get (none under KVM)."""
    if domain_type != "qemu":
        return {}
    patches: dict[str, dict[str, Any]] = {
        pod: {"spec": {"containers": [{"name": pod} | {p: _slow(p) for p in probes}]}}
        for pod, probes in EMULATED_PROBES.items()
    }
    patches["corednsdeployment"] = EMULATED_COREDNS
    return {
        f"{PATCHES_DIR}/{target}+strategic.yaml": yaml.safe_dump(patch)
        for target, patch in patches.items()
    }


def _slow(probe: str) -> dict[str, int]:
    return SLOW_LIVENESS if probe == "livenessProbe" else SLOW_PROBE


def _args(flags: dict[str, str]) -> list[dict[str, str]]:
    """v1beta4's extraArgs: a list of name/value pairs."""
    return [{"name": k, "value": v} for k, v in flags.items()]


def api_endpoint(cfg: LabConfig) -> str:
    return f"{cfg.endpoint_address}:{cfg.endpoint_port}"


def init_configuration(cfg: LabConfig, node: Node, domain_type: DomainType) -> str:
    """InitConfiguration + ClusterConfiguration for the first control plane. Its certSANs name
    the endpoint only: kubeadm adds each control plane's own address to that node's certificate,
    so no list of control planes (which changes when they are scaled) is needed here."""
    k8s = cfg.kubernetes
    init: dict[str, Any] = {
        "apiVersion": API,
        "kind": "InitConfiguration",
        "localAPIEndpoint": {"advertiseAddress": str(node.address), "bindPort": API_PORT},
        "nodeRegistration": _node_registration(node, domain_type),
    }
    cluster: dict[str, Any] = {
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
        "apiServer": {"certSANs": [str(cfg.endpoint_address)]},
        "etcd": {"local": {}},
    }
    if cfg.release is not None:
        cluster |= release_tags(cfg.release)
    if domain_type == "qemu":
        init["timeouts"] = EMULATED_TIMEOUTS | {"upgradeManifests": "20m0s"}
        init["patches"] = {"directory": PATCHES_DIR}
        cluster["etcd"]["local"]["extraArgs"] = _args(EMULATED_ETCD)
        if minor_of(k8s.version) < LOCAL_MODE_LOCKED:
            cluster["featureGates"] = EMULATED_FEATURE_GATES
        cluster["apiServer"]["extraArgs"] = _args(EMULATED_API_SERVER)
        for component in ("controllerManager", "scheduler"):
            cluster[component] = {"extraArgs": _args(EMULATED_LEADER_ELECTION)}
    return yaml.safe_dump_all([init, cluster], sort_keys=False)


def release_tags(release: Release) -> dict[str, Any]:
    """ClusterConfiguration's etcd and CoreDNS tags: the ones the node image holds for the
    release (image/versions.tsv), which may differ from kubeadm's own defaults. `lab upgrade`
    writes them into the cluster's copy before kubeadm upgrades to the next release."""
    return {"etcd": {"local": {"imageTag": release.etcd_tag}}, "dns": {"imageTag": release.coredns}}


def join_configuration(
    cfg: LabConfig,
    node: Node,
    *,
    token: str,
    ca_cert_hash: str,
    certificate_key: str | None,
    domain_type: DomainType,
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
        "nodeRegistration": _node_registration(node, domain_type),
    }
    if domain_type == "qemu":
        join["timeouts"] = EMULATED_TIMEOUTS
        if node.is_control_plane:
            join["patches"] = {"directory": PATCHES_DIR}
    if node.is_control_plane:
        if not certificate_key:
            raise ValueError(f"{node.name} is a control plane: a certificate key is required")
        join["controlPlane"] = {
            "localAPIEndpoint": {"advertiseAddress": str(node.address), "bindPort": API_PORT},
            "certificateKey": certificate_key,
        }
    return yaml.safe_dump(join, sort_keys=False)


UPGRADE_PATH = "/etc/kubernetes/lab/upgrade.yaml"


# kubeadm's upgrade plan and apply first run a Job on the cluster and give it a fixed 60 s to
# complete (phases/upgrade/health.go): a pod's start on an emulated guest took longer (e2e,
# "Job upgrade-health-check-... did not complete in 1m0s"). The rest of the health check stays.
EMULATED_UPGRADE_CHECKS = {"ignorePreflightErrors": ["CreateJob"]}


def upgrade_configuration(cfg: LabConfig, node: Node, domain_type: DomainType) -> str:
    """UpgradeConfiguration for `kubeadm upgrade plan` and `apply` (the first control plane) and
    `upgrade node` (every other node): to kubernetes.version, pulling nothing (`lab upgrade`
    imported the images), the control planes keeping the probe patches and timeouts of their
    join."""
    version = {"kubernetesVersion": f"v{cfg.kubernetes.version}"}
    policy: dict[str, Any] = {"imagePullPolicy": "Never"}
    checks: dict[str, Any] = {}
    if domain_type == "qemu":
        checks = EMULATED_UPGRADE_CHECKS
        if node.is_control_plane:
            policy["patches"] = {"directory": PATCHES_DIR}
    upgrade: dict[str, Any] = {
        "apiVersion": API,
        "kind": "UpgradeConfiguration",
        "plan": version | checks,
        "apply": version | policy | checks,
        "node": dict(policy),
    }
    if domain_type == "qemu":
        upgrade["timeouts"] = EMULATED_TIMEOUTS | {"upgradeManifests": "20m0s"}
    return yaml.safe_dump(upgrade, sort_keys=False)
