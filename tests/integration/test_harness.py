"""The harness on its own, before any `lab` command: SSH with the pinned key, the kubeadm stand-in
on real etcd (init, join as learner + promote, reset), faults. etcd, SSH and the network are
real."""

from __future__ import annotations

import json
from collections.abc import Callable

from .harness import Harness


def test_ssh_pinned_key_and_node_isolation(make_harness: Callable[..., Harness]) -> None:
    lab = make_harness(nodes=("cp1", "cp2"))
    out = lab.ssh("cp1", "hostname -I; command -v kubeadm; ls /etc/kubernetes/pki").stdout
    assert "10.30.0.11" in out and "/kubeadm" in out and "apiserver-etcd-client.crt" in out
    lab.nodes["cp2"].exec(["touch", "/etc/kubernetes/only-cp2"])
    assert lab.ssh("cp1", "ls /etc/kubernetes").stdout.split() == ["pki"]
    assert "only-cp2" in lab.ssh("cp2", "ls /etc/kubernetes").stdout


def test_standin_init_join_promote_reset(make_harness: Callable[..., Harness]) -> None:
    lab = make_harness(nodes=("cp1", "cp2"))
    lab.init("cp1")
    assert lab.voters() == ["cp1"]
    token = lab.ssh("cp1", "kubeadm token create --ttl 1h").stdout.strip()
    key = lab.ssh("cp1", "kubeadm init phase upload-certs --upload-certs").stdout.split()[-1]
    ca_hash = lab.ssh(
        "cp1",
        "openssl x509 -pubkey -noout -in /etc/kubernetes/pki/ca.crt"
        " | openssl pkey -pubin -outform der | sha256sum",
    ).stdout.split()[0]
    join = (
        "apiVersion: kubeadm.k8s.io/v1beta4\nkind: JoinConfiguration\n"
        "discovery:\n  bootstrapToken:\n    apiServerEndpoint: 10.30.0.11:6443\n"
        f"    token: {token}\n    caCertHashes: [sha256:{ca_hash}]\n"
        "nodeRegistration: {name: cp2}\n"
        "controlPlane:\n  localAPIEndpoint: {advertiseAddress: 10.30.0.12, bindPort: 6443}\n"
        f"  certificateKey: {key}\n"
    )
    lab.ssh(
        "cp2", f"mkdir -p /etc/kubernetes/lab && cat > /etc/kubernetes/lab/join.yaml <<'E'\n{join}E"
    )
    lab.put("/before-join", "kept")
    lab.ssh("cp2", "kubeadm join --config /etc/kubernetes/lab/join.yaml")
    assert lab.voters() == ["cp1", "cp2"] and not lab.learners()
    assert lab.get_from("cp2", "/before-join") == "kept"
    nodes = json.loads(
        lab.ssh("cp1", "kubectl --kubeconfig /etc/kubernetes/admin.conf get nodes -o json").stdout
    )
    assert sorted(i["metadata"]["name"] for i in nodes["items"]) == ["cp1", "cp2"]
    # joining again is refused by preflight, as by kubeadm
    again = lab.ssh("cp2", "kubeadm join --config /etc/kubernetes/lab/join.yaml", check=False)
    assert again.returncode != 0 and "already exists" in again.stderr
    lab.ssh("cp2", "kubeadm reset -f")
    assert lab.voters() == ["cp1"]
    assert lab.ssh("cp2", "ls -A /var/lib/etcd").stdout == ""


def test_standin_promote_fails_under_partition_and_leaves_learner(
    make_harness: Callable[..., Harness],
) -> None:
    lab = make_harness(nodes=("cp1", "cp2"), promote_timeout=3)
    lab.init("cp1")
    token = lab.ssh("cp1", "kubeadm token create").stdout.strip()
    key = lab.ssh("cp1", "kubeadm init phase upload-certs --upload-certs").stdout.split()[-1]
    ca_hash = lab.ssh(
        "cp1",
        "openssl x509 -pubkey -noout -in /etc/kubernetes/pki/ca.crt"
        " | openssl pkey -pubin -outform der | sha256sum",
    ).stdout.split()[0]
    lab.nodes["cp2"].exec(["mkdir", "-p", "/etc/kubernetes/lab"])
    (lab.nodes["cp2"].dir / "kube" / "lab" / "join.yaml").write_text(
        "apiVersion: kubeadm.k8s.io/v1beta4\nkind: JoinConfiguration\n"
        "discovery:\n  bootstrapToken:\n    apiServerEndpoint: 10.30.0.11:6443\n"
        f"    token: {token}\n    caCertHashes: [sha256:{ca_hash}]\n"
        "nodeRegistration: {name: cp2}\n"
        f"controlPlane:\n  certificateKey: {key}\n"
    )
    lab.nodes["cp2"].block_port(2380)
    failed = lab.ssh("cp2", "kubeadm join --config /etc/kubernetes/lab/join.yaml", check=False)
    assert failed.returncode == 1
    assert "can only promote a learner member which is in sync with leader" in failed.stderr
    # a learner that never caught up has not published its name: etcd lists it by peer URL only
    assert [m["peerURLs"] for m in lab.learners()] == [["https://10.30.0.12:2380"]]
    second = lab.etcdctl(
        "member", "add", "x", "--peer-urls=https://10.30.0.99:2380", "--learner", check=False
    )
    assert "too many learner members in cluster" in second.stderr
    lab.nodes["cp2"].unblock_port(2380)
    lab.ssh("cp2", "kubeadm reset -f")
    assert lab.voters() == ["cp1"] and not lab.learners()


def test_faults_and_etcd_restart(make_harness: Callable[..., Harness]) -> None:
    lab = make_harness(nodes=("cp1",))
    lab.init("cp1")
    cp1 = lab.nodes["cp1"]
    cp1.loss(0.05)
    cp1.bandwidth("10mbit")
    assert "statistic" in cp1.exec(["iptables", "-S", "INPUT"]).stdout
    cp1.clear_faults()
    cp1.kill_etcd()
    assert lab.etcdctl("endpoint", "health", check=False).returncode != 0
    cp1.start_etcd()
    lab.put("/after-restart", "ok")
    assert lab.get_from("cp1", "/after-restart") == "ok"
