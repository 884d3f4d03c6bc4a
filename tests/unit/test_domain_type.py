"""libvirt.domain_type: the configured type, or for `auto` a KVM probe run once and remembered."""

from __future__ import annotations

from pathlib import Path

from lab.config import LabConfig, parse_config
from lab.domain_type import choose, probe_kernel


def config(tmp_path: Path, domain_type: str = "auto") -> LabConfig:
    return parse_config(
        {"libvirt": {"domain_type": domain_type}, "state_dir": str(tmp_path / "state")}, "x"
    )


def never(kernel: Path) -> tuple[bool, str]:
    raise AssertionError("probed")


def test_a_configured_type_is_used_as_is(tmp_path: Path) -> None:
    assert choose(config(tmp_path, "qemu"), kvm=tmp_path, probe=never).type == "qemu"
    assert choose(config(tmp_path, "kvm"), kvm=tmp_path / "none", probe=never).type == "kvm"


def test_auto_without_dev_kvm_emulates(tmp_path: Path) -> None:
    choice = choose(config(tmp_path), kvm=tmp_path / "kvm", probe=never)
    assert choice.type == "qemu" and "kvm is missing" in choice.reason


def test_auto_probes_once_and_remembers(tmp_path: Path) -> None:
    cfg, kvm = config(tmp_path), tmp_path / "kvm"
    kvm.touch()
    assert choose(cfg, kvm=kvm, probe=never).type == "kvm"  # no kernel to probe with: not kept
    kernel = probe_kernel(cfg)
    kernel.parent.mkdir(parents=True)
    kernel.write_bytes(b"bzImage")
    calls: list[Path] = []

    def fails(k: Path) -> tuple[bool, str]:
        calls.append(k)
        return False, "KVM stops a Linux guest on this host (KVM internal error)"

    first = choose(cfg, kvm=kvm, probe=fails)
    assert (first.type, calls) == ("qemu", [kernel])
    again = choose(cfg, kvm=kvm, probe=never)
    assert again.type == "qemu" and "KVM internal error" in again.reason
    assert "probed earlier" in str(again) and str(again).startswith("libvirt domain type qemu:")
