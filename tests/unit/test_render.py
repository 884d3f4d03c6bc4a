"""Rendered cloud-init and kubeadm files: checked by cloud-init's own schema and by content."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from lab import keys
from lab.config import LabConfig, parse_config
from lab.render import cloudinit, kubeadm
from lab.topology import Node, Topology, build_topology


@pytest.fixture
def lab(tmp_path: Path) -> tuple[LabConfig, Topology, Path]:
    cfg = parse_config({"state_dir": str(tmp_path)}, "test")
    return cfg, build_topology(cfg), tmp_path


def render(cfg: LabConfig, topo: Topology, state: Path, node: Node) -> str:
    user_key = keys.ensure_user_key(state / "ssh" / "id_ed25519")
    return cloudinit.user_data(
        cfg, topo, node, user_key=user_key, host_key=keys.ensure_host_key(state, node.name)
    )


@pytest.mark.parametrize("node", ["cp1", "cp2", "worker1"])
def test_user_data_passes_cloud_inits_own_schema(lab, node: str, tmp_path: Path) -> None:
    cloud_init = shutil.which("cloud-init")
    assert cloud_init, (
        "cloud-init is missing: `make test` installs it (scripts/install-test-deps.sh)"
    )
    cfg, topo, state = lab
    path = tmp_path / f"{node}.yaml"
    path.write_text(render(cfg, topo, state, topo.node(node)))
    out = subprocess.run([cloud_init, "schema", "-c", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Valid cloud-config" in out.stdout


def test_cloud_inits_schema_check_does_reject_bad_user_data(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("#cloud-config\npackages: 3\n")
    out = subprocess.run(["cloud-init", "schema", "-c", str(bad)], capture_output=True, text=True)
    assert out.returncode != 0


def test_user_data_sets_node_identity_user_and_pinned_host_key(lab) -> None:
    cfg, topo, state = lab
    doc = yaml.safe_load(render(cfg, topo, state, topo.node("cp2")))
    assert doc["hostname"] == "cp2"
    assert doc["users"][0]["name"] == "lab"
    assert doc["users"][0]["ssh_authorized_keys"] == [
        (state / "ssh" / "id_ed25519.pub").read_text().strip()
    ]
    assert doc["ssh_keys"]["ed25519_public"] == keys.pinned_host_key(state, "cp2")
    assert doc["ssh_pwauth"] is False
    cmds = "\n".join(doc["runcmd"])
    assert "swapoff -a" in cmds and "modprobe br_netfilter" in cmds
    assert "kubeadm=1.33.5-*" in cmds and "core:/stable:/v1.33/deb/" in cmds
    assert "SystemdCgroup = true" in cmds
    assert "10.30.0.13 cp3.lab.local cp3" in cmds  # /etc/hosts knows every node
    assert "qemu-guest-agent" in doc["packages"]


def test_only_cp1_carries_the_init_configuration(lab) -> None:
    cfg, topo, state = lab
    paths = {
        n: [
            f["path"] for f in yaml.safe_load(render(cfg, topo, state, topo.node(n)))["write_files"]
        ]
        for n in ("cp1", "cp2", "worker1")
    }
    assert kubeadm.INIT_PATH in paths["cp1"]
    assert kubeadm.INIT_PATH not in paths["cp2"]
    assert cloudinit.KUBE_VIP_PATH in paths["cp1"]
    # kubeadm join refuses a non-empty manifests folder: joiners get kube-vip from `lab join`.
    assert not any(p.startswith("/etc/kubernetes") for p in paths["cp2"])
    assert not any(p.startswith("/etc/kubernetes") for p in paths["worker1"])


def test_kube_vip_uses_super_admin_only_on_cp1(lab) -> None:
    cfg, topo, _ = lab
    cp1 = yaml.safe_load(cloudinit.kube_vip_manifest(cfg, topo.node("cp1")))
    cp2 = yaml.safe_load(cloudinit.kube_vip_manifest(cfg, topo.node("cp2")))
    assert cp1["spec"]["volumes"][0]["hostPath"]["path"] == "/etc/kubernetes/super-admin.conf"
    assert cp2["spec"]["volumes"][0]["hostPath"]["path"] == "/etc/kubernetes/admin.conf"
    env = {e["name"]: e["value"] for e in cp2["spec"]["containers"][0]["env"]}
    assert env["address"] == "10.30.0.10" and env["vip_interface"] == cloudinit.INTERFACE


def test_network_config_is_static_on_the_lab_bridge(lab) -> None:
    cfg, topo, _ = lab
    doc = yaml.safe_load(cloudinit.network_config(cfg, topo.node("worker2")))
    nic = doc["ethernets"][cloudinit.INTERFACE]
    assert nic["match"] == {"macaddress": "52:54:00:1e:00:16"}
    assert nic["addresses"] == ["10.30.0.22/24"]
    assert nic["routes"] == [{"to": "default", "via": "10.30.0.1"}]


def test_init_configuration_advertises_the_lab_address(lab) -> None:
    cfg, topo, _ = lab
    init, cluster = yaml.safe_load_all(
        kubeadm.init_configuration(cfg, topo.first, list(topo.nodes))
    )
    assert init["apiVersion"] == cluster["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert init["localAPIEndpoint"]["advertiseAddress"] == "10.30.0.11"
    assert init["nodeRegistration"]["kubeletExtraArgs"] == [
        {"name": "node-ip", "value": "10.30.0.11"}
    ]
    assert cluster["controlPlaneEndpoint"] == "10.30.0.10:6443"
    assert cluster["kubernetesVersion"] == "v1.33.5"
    assert cluster["networking"]["podSubnet"] == "10.244.0.0/16"
    assert {"10.30.0.10", "10.30.0.11", "10.30.0.12", "10.30.0.13"} <= set(
        cluster["apiServer"]["certSANs"]
    )


def test_join_configuration_for_a_control_plane_and_a_worker(lab) -> None:
    cfg, topo, _ = lab
    creds = {"token": "abcdef.0123456789abcdef", "ca_cert_hash": "sha256:" + "0" * 64}
    cp = yaml.safe_load(
        kubeadm.join_configuration(cfg, topo.node("cp3"), certificate_key="k" * 64, **creds)
    )
    assert cp["kind"] == "JoinConfiguration"
    assert cp["discovery"]["bootstrapToken"] == {
        "apiServerEndpoint": "10.30.0.10:6443",
        "token": creds["token"],
        "caCertHashes": [creds["ca_cert_hash"]],
    }
    assert cp["controlPlane"]["localAPIEndpoint"]["advertiseAddress"] == "10.30.0.13"
    assert cp["controlPlane"]["certificateKey"] == "k" * 64
    worker = yaml.safe_load(
        kubeadm.join_configuration(cfg, topo.node("worker1"), certificate_key=None, **creds)
    )
    assert "controlPlane" not in worker
    with pytest.raises(ValueError, match="cp3 is a control plane"):
        kubeadm.join_configuration(cfg, topo.node("cp3"), certificate_key=None, **creds)


def test_init_script_is_idempotent_and_patches_the_pod_cidr() -> None:
    cfg = parse_config({"kubernetes": {"pod_cidr": "10.200.0.0/16"}}, "x")
    script = kubeadm.init_script(cfg)
    assert "if [ ! -f /etc/kubernetes/admin.conf ]; then" in script
    assert "s#10.244.0.0/16#10.200.0.0/16#" in script
    assert "super-admin.conf#/etc/kubernetes/admin.conf" in script
    assert "flannel" not in kubeadm.init_script(parse_config({"kubernetes": {"cni": "none"}}, "x"))
