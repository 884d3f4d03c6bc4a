"""Name the cause of a failed join from the text kubeadm, etcd or SSH printed."""

from __future__ import annotations

import re

# (cause, what it means, patterns) in priority order: the first match wins.
CAUSES: list[tuple[str, str, tuple[str, ...]]] = [
    (
        "path-blocked",
        "a TCP path the join needs does not connect (firewall, libvirt network)",
        ("path blocked",),
    ),
    (
        "learner-not-in-sync",
        "the new etcd learner did not catch up with the leader in time (peer traffic on 2380?)",
        ("can only promote a learner member which is in sync with leader",),
    ),
    (
        "already-voter",
        "etcd had promoted the member, but kubeadm's promote call timed out and its retries were"
        " refused (the join's remaining phases finish such a node)",
        ("can only promote a learner member", "has been a voter"),
    ),
    (
        "too-many-learners",
        "a stale learner from an earlier attempt blocks the member add",
        ("too many learner members in cluster",),
    ),
    (
        "unhealthy-cluster",
        "etcd refused the change: the cluster is not healthy",
        ("unhealthy cluster", "etcdserver: re-configuration failed"),
    ),
    (
        "no-leader",
        "etcd has no leader (quorum lost or an election in progress)",
        ("no leader", "leader changed", "etcdserver: request timed out"),
    ),
    (
        "member-exists",
        "the node is already an etcd member (stale member of an earlier join)",
        ("peerurl exists", "member already exists", "peer urls already exists"),
    ),
    (
        "credentials",
        "the bootstrap token or certificate key was refused or expired",
        (
            "certificate key",
            "token id",
            "couldn't validate the identity",
            "unable to fetch the kubeadm-certs",
            'secret "kubeadm-certs" not found',
            "decrypt",
        ),
    ),
    (
        "node-dirty",
        "the node holds files of an earlier join (kubeadm preflight)",
        ("already exists", "port 10250 is in use", "is not empty", "some fatal errors occurred"),
    ),
    (
        "etcd-unstable",
        "etcd did not become stable in time (see the gate's rules)",
        ("gate failed",),
    ),
    # Before connection-refused: the wait's last /livez may meet the node's API server between
    # two of its restarts (HA run 25), and that is this wait running out, not a closed port.
    (
        "control-plane-not-live",
        "the node's own API server did not pass /livez in kubeadm's wait (under emulation: its"
        " etcd member still catching up on a loaded host, HA runs 10 and 13); the node is a"
        " voter by then, so the wait is run again rather than the voter undone",
        ("failed while waiting for the control plane to start",),
    ),
    (
        "connection-refused",
        "a port the join needs is closed (nothing listening)",
        ("connection refused",),
    ),
    (
        "kubeadm-etcd-limit",
        "kubeadm's etcd-join gave up on a slow etcd call (most have a fixed 2 s limit); a learner"
        " it started is promoted by the lab and the join finished, else the attempt is retried",
        ("error creating local etcd static pod manifest file",),
    ),
    (
        "api-timeout",
        "a Kubernetes API request timed out: the API server behind the endpoint answered too"
        " slowly (the join's preflight had found its port open)",
        ("?timeout=", "tls handshake timeout", "client.timeout exceeded"),
    ),
    (
        "kubelet-bootstrap",
        "the kubelet's TLS bootstrap did not finish in time: its certificate request was not"
        " approved (kube-controller-manager approves it: `lab kubectl get csr` shows it Pending"
        " while that one keeps losing its leader lease on a loaded API server, HA run 12), or the"
        " API server it bootstraps against did not answer; kubeadm deletes the bootstrap"
        " credentials as it gives up, so the lab runs kubelet-start again with fresh ones once"
        " the node's own API server answers, keeping its etcd voter",
        ("waiting for tls bootstrap",),
    ),
    (
        "timeout",
        "a connection or request timed out (filtered port, lost packets)",
        ("timed out", "timeout", "deadline exceeded", "i/o timeout", "context deadline"),
    ),
    ("ssh", "the node is not reachable over SSH", ("unreachable", "host key", "ssh")),
]


def classify(text: str) -> tuple[str, str]:
    """(cause, meaning) for an error text; ('unknown', first line) when nothing matches."""
    low = text.lower()
    for cause, meaning, patterns in CAUSES:
        if any(p in low for p in patterns):
            return cause, meaning
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "no output")
    return "unknown", re.sub(r"\s+", " ", first)[:200]
