"""`lab preflight`: each missing piece of the host is named with its fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.config import parse_config
from lab.preflight import host_problems, libvirt_socket_problem
from lab.render.domain import XSLT_TOOL_MISSING


def test_missing_system_socket_names_the_fix(tmp_path: Path) -> None:
    msg = libvirt_socket_problem("qemu:///system", (str(tmp_path / "libvirt-sock"),))
    assert msg is not None
    assert "libvirt is not running at qemu:///system" in msg
    assert "systemctl enable --now libvirtd" in msg and "lab libvirtd start" in msg


def test_present_socket_explicit_socket_and_remote_uris(tmp_path: Path) -> None:
    sock = tmp_path / "sock"
    sock.touch()
    assert libvirt_socket_problem("qemu:///system", (str(sock),)) is None
    assert libvirt_socket_problem(f"qemu+unix:///system?socket={sock}") is None
    assert "no socket at /nope" in str(libvirt_socket_problem("qemu+unix:///system?socket=/nope"))
    assert libvirt_socket_problem("qemu+ssh://root@hv/system") is None
    assert libvirt_socket_problem("qemu:///session") is None


def test_host_problems_lists_kvm(tmp_path: Path) -> None:
    sock = tmp_path / "sock"
    sock.touch()
    uri = f"qemu+unix:///system?socket={sock}"
    cfg = parse_config({"libvirt": {"uri": uri, "domain_type": "kvm"}}, "x")
    problems = host_problems(cfg, kvm=tmp_path / "kvm")
    assert any(
        p.startswith(f"KVM is not available ({tmp_path / 'kvm'} is missing)") for p in problems
    )
    assert not any("libvirt" in p.split(":")[0] for p in problems)
    emulation = parse_config({"libvirt": {"uri": uri}}, "x")  # auto: software emulation
    assert not any("KVM" in p for p in host_problems(emulation, kvm=tmp_path / "kvm"))


def test_host_problems_name_a_missing_xsltproc(monkeypatch: pytest.MonkeyPatch) -> None:
    """The libvirt provider runs xsltproc for every domain; without it `pulumi up` would fail
    in the provider's words, after the network and volumes were made."""
    cfg = parse_config({}, "x")
    assert XSLT_TOOL_MISSING not in host_problems(cfg)
    monkeypatch.setattr("lab.preflight.xslt_tool", lambda: None)
    assert XSLT_TOOL_MISSING in host_problems(cfg)
