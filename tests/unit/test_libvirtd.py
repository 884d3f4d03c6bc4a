"""The private libvirtd's bookkeeping; starting the real daemon is the engine and e2e tiers' job
(their fixture is this same class)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab.libvirtd import LibvirtdError, PrivateLibvirtd, for_lab, reenter

REPO = Path(__file__).resolve().parents[2]


def test_the_labs_daemon_lives_under_the_state_folder_named_for_the_cluster(tmp_path) -> None:
    daemon = for_lab(tmp_path, "k8s-lab")
    assert daemon.netns == "k8s-lab-libvirt"
    assert daemon.root == (tmp_path / "libvirtd").resolve()
    assert daemon.uri == f"qemu+unix:///system?socket={daemon.root}/run_libvirt/libvirt-sock"


def test_a_stale_or_missing_pid_file_means_not_running(tmp_path) -> None:
    daemon = PrivateLibvirtd(tmp_path, "x")
    assert daemon.pid() is None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    daemon.pid_file.write_text(f"{dead.pid}\n")
    assert daemon.pid() is None
    with pytest.raises(LibvirtdError, match="is not running"):
        daemon.command(["true"])


def test_commands_enter_a_running_daemons_namespaces(tmp_path) -> None:
    daemon = PrivateLibvirtd(tmp_path, "x")
    daemon.pid_file.write_text(str(os.getpid()))  # a live pid stands for the daemon
    argv = daemon.command(["virsh", "list"])
    assert argv[:6] == ["nsenter", "-t", str(os.getpid()), "-m", "-n", f"--wd={Path.cwd()}"]
    assert argv[-3:] == ["--", "virsh", "list"]
    assert daemon.inside()  # this process shares the namespaces of "the daemon" (itself)
    reenter(daemon, ["plan"])  # already inside: returns instead of exec'ing


def test_exec_without_a_private_daemon_runs_the_command_here(tmp_path) -> None:
    config = tmp_path / "cluster.yaml"
    config.write_text(f"state_dir: {tmp_path}\n")
    lab = [sys.executable, "-m", "lab.cli"]
    out = subprocess.run(
        [*lab, "libvirtd", "exec", "--config", str(config), "--", "echo", "here"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert (out.returncode, out.stdout) == (0, "here\n"), out.stderr
