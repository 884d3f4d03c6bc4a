"""The lab's kubeadm patches, applied by the kubeadm of each release the e2e tiers run (the node
image's bundle): the API server manifest an emulated control plane gets. kubeadm writes it in
dry-run mode into a temporary folder (KUBEADM_INIT_DRYRUN_DIR), so nothing of the host changes;
it is the same code (manifest, then patches) a join runs in its control-plane-prepare phase."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from lab import releases
from lab.config import parse_config
from lab.render import kubeadm
from lab.topology import build_topology

from .cluster import UPGRADE_TO, upgrade_from


def api_server_manifest(version: str, tmp: Path, patches: dict[str, str]) -> str:
    """kube-apiserver's manifest as `version`'s kubeadm writes it for cp1 with `patches` (file
    name -> content), or AssertionError with kubeadm's output."""
    binary = releases.bundle_path(version) / "bin" / "kubeadm"
    assert binary.is_file(), f"{binary} is missing: run `make image VERSION={version}`"
    cfg = parse_config({"state_dir": str(tmp / "state"), "kubernetes": {"version": version}}, "e2e")
    init = list(
        yaml.safe_load_all(kubeadm.init_configuration(cfg, build_topology(cfg).first, "qemu"))
    )
    (tmp / "patches").mkdir(parents=True)
    for name, text in patches.items():
        (tmp / "patches" / name).write_text(text)
    init[0]["patches"] = {"directory": str(tmp / "patches")}
    (tmp / "init.yaml").write_text(yaml.safe_dump_all(init))
    (tmp / "dry").mkdir()
    phase = ["init", "phase", "control-plane", "apiserver", "--dry-run"]
    r = subprocess.run(
        [binary, *phase, "--config", tmp / "init.yaml"],
        env=os.environ | {"KUBEADM_INIT_DRYRUN_DIR": str(tmp / "dry")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return (tmp / "dry" / "kube-apiserver.yaml").read_text()


def command(manifest: str) -> list[str]:
    return list(yaml.safe_load(manifest)["spec"]["containers"][0]["command"])


def test_every_releases_kubeadm_points_a_joining_api_server_at_the_other_members(
    tmp_path: Path,
) -> None:
    topo = build_topology(parse_config({"state_dir": str(tmp_path)}, "e2e"))
    others = [topo.node("cp1"), topo.node("cp3")]  # cp2's
    probes = {Path(p).name: text for p, text in kubeadm.emulated_patches("qemu").items()}
    name = Path(kubeadm.ETCD_SERVERS_PATCH).name
    for version in sorted({upgrade_from(), UPGRADE_TO}, key=releases.patch_key):
        plain = api_server_manifest(version, tmp_path / version / "plain", {})
        index = kubeadm.etcd_servers_index(plain)
        assert command(plain)[index] == kubeadm.KUBEADM_ETCD_SERVERS, version
        patch = {name: kubeadm.etcd_servers_patch(index, others)}
        patched = api_server_manifest(version, tmp_path / version / "patched", probes | patch)
        assert [a for a in command(patched) if a not in command(plain)] == [
            "--etcd-servers=https://10.30.0.11:2379,https://10.30.0.13:2379"
        ], version
        assert len(command(patched)) == len(command(plain)), version
        # a patch made for another layout fails kubeadm instead of replacing another flag
        wrong = {name: kubeadm.etcd_servers_patch(index + 1, others)}
        with pytest.raises(AssertionError, match="test failed"):
            api_server_manifest(version, tmp_path / version / "wrong", wrong)
