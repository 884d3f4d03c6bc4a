"""image/versions.tsv and what is refused before an upgrade runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lab import releases
from lab.ops.upgrade import control_plane_at, parse_probe

REPO = Path(__file__).resolve().parents[2]


def test_the_table_names_every_component_of_each_release() -> None:
    table = releases.releases()
    assert list(table) == ["1.37.2", "1.36.3", "1.35.4", "1.34.4"]  # newest first
    assert table["1.37.2"] == releases.Release("1.37.2", "3.7.0", "v1.14.6", "3.10.2")
    assert table["1.37.2"].etcd_tag == "3.7.0-0"


@pytest.mark.parametrize(
    ("current", "target", "refused"),
    [
        ("1.36.3", "1.37.2", None),  # one minor
        ("1.37.2", "1.37.2", None),
        ("1.36.1", "1.36.3", None),  # a patch
        ("1.36.3", "1.36.1", "older than the cluster's 1.36.3: kubeadm does not downgrade"),
        ("1.35.4", "1.37.2", "more than one minor version past the cluster's 1.35.4"),
        ("1.34.4", "1.36.3", "upgrade to 1.35.4 first"),
    ],
)
def test_kubeadm_upgrades_one_minor_at_a_time_and_never_down(current, target, refused) -> None:
    why = releases.upgrade_refusal(current, target)
    assert (why is None) if refused is None else (refused in str(why)), why


def test_a_changed_version_is_checked_against_the_recorded_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the project root, where .lab/images is
    assert releases.change_refusal(tmp_path, "1.37.2") is None  # no cluster yet
    releases.record(tmp_path, "1.36.3")
    assert releases.recorded(tmp_path) == "1.36.3"
    missing = releases.change_refusal(tmp_path, "1.37.2")
    assert missing is not None and "k8s-node-v1.37.2 is missing): run `make image`" in missing
    releases.bundle_path("1.37.2").mkdir(parents=True)
    assert releases.change_refusal(tmp_path, "1.37.2") is None
    releases.record(tmp_path, None)
    assert releases.recorded(tmp_path) is None


def test_lab_plan_refuses_a_jump_with_exit_2_and_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    releases.record(state, "1.35.4")
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(f"state_dir: {state}\nkubernetes: {{version: 1.37.2}}\n")
    out = subprocess.run(
        [sys.executable, "-m", "lab.cli", "plan", "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1
    assert "kubernetes.version 1.37.2 is more than one minor version past" in out.stderr


PROBED = """kubeadm=v1.37.2
kubelet=Kubernetes v1.37.2
image=registry.k8s.io/etcd:3.7.0-0
image=registry.k8s.io/kube-apiserver:v1.37.2
image="registry.k8s.io/kube-scheduler:v1.37.2"
"""


def test_a_node_is_at_the_version_by_its_binaries_static_pods_and_no_unfinished_upgrade() -> None:
    state = parse_probe(PROBED)
    assert state.at("1.37.2", "3.7.0-0", control_plane=True)
    assert not state.at("1.37.2", "3.6.8-0", control_plane=True)  # etcd not yet upgraded
    assert not parse_probe(PROBED + "unfinished\n").at("1.37.2", "3.7.0-0", control_plane=True)
    worker = parse_probe("kubeadm=v1.37.2\nkubelet=Kubernetes v1.36.3\n")
    assert not worker.at("1.37.2", None, control_plane=False)
    assert parse_probe("kubeadm=v1.37.2\nkubelet=Kubernetes v1.37.2\n").at(
        "1.37.2", None, control_plane=False
    )
    assert not control_plane_at((), "1.37.2", None)  # no static pods: not a control plane yet
