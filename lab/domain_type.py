"""Which libvirt domain type runs the lab's guests: `kvm` where KVM really runs a Linux guest,
else `qemu` (software emulation: slower, but it runs). Some hosts open /dev/kvm and still stop
every Linux guest with "KVM internal error", so `auto` boots a kernel under KVM once, with no
disk, and remembers the answer in the state folder.
"""

from __future__ import annotations

import selectors
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lab.config import LabConfig

DomainType = Literal["kvm", "qemu"]
# How much longer a call to a guest may take under software emulation: SSH handshakes and etcd
# calls that take well under a second under KVM took several seconds in loaded emulated guests.
SLOWDOWN: dict[DomainType, float] = {"kvm": 1, "qemu": 6}
# How many times `cp_join_retry_max_total_seconds` a join may take: an emulated control plane's
# first attempt took 23-34 min (HA runs 9 and 10), leaving a second 4 min of the default 40.
JOIN_BUDGET: dict[DomainType, float] = {"kvm": 1, "qemu": 3}
# etcd's election timeout on the lab's control planes: etcd's default under KVM; emulated
# members churned through elections with it, so lab.render.kubeadm sets 5 s for them.
ELECTION_TIMEOUT_SECONDS: dict[DomainType, float] = {"kvm": 1, "qemu": 5}
BOOTED = "Kernel panic - not syncing: VFS"  # the kernel came up and looked for its root disk
KVM_FAILED = "KVM internal error"


@dataclass(frozen=True)
class Choice:
    type: DomainType
    reason: str

    def __str__(self) -> str:
        return f"libvirt domain type {self.type}: {self.reason}"


def probe_kernel(cfg: LabConfig) -> Path:
    """The node image's kernel, which `make image` leaves beside the image."""
    return cfg.state_dir / "images" / "vmlinuz"


def kvm_boots(kernel: Path, timeout: float = 60) -> tuple[bool, str]:
    """Boot `kernel` under KVM with no disk and no network; True once it gets to mounting root."""
    argv = ["qemu-system-x86_64", "-accel", "kvm", "-m", "256", "-kernel", str(kernel)]
    argv += ["-append", "console=ttyS0 panic=-1", "-nographic", "-no-reboot", "-nic", "none"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    seen, deadline = b"", time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        try:
            while (left := deadline - time.monotonic()) > 0:
                if not sel.select(left):
                    break
                chunk = proc.stdout.read1(4096)  # type: ignore[attr-defined]
                seen += chunk
                if BOOTED.encode() in seen:
                    return True, "a Linux kernel boots under KVM here"
                if KVM_FAILED.encode() in seen or not chunk:
                    break
        finally:
            proc.kill()
            proc.wait()
    if KVM_FAILED.encode() in seen:
        return False, f"KVM stops a Linux guest on this host ({KVM_FAILED})"
    return False, f"a Linux kernel did not boot under KVM within {timeout:.0f} s"


def choose(
    cfg: LabConfig,
    kvm: Path = Path("/dev/kvm"),
    probe: Callable[[Path], tuple[bool, str]] = kvm_boots,
) -> Choice:
    """The configured type, or for `auto` the remembered or probed one."""
    wanted = cfg.libvirt.domain_type
    if wanted != "auto":
        return Choice(wanted, "set by libvirt.domain_type")
    if not kvm.exists():
        return Choice("qemu", f"{kvm} is missing, so software emulation")
    remembered = cfg.state_dir / "domain-type"
    if remembered.is_file():
        kind, _, reason = remembered.read_text().strip().partition(": ")
        if kind in ("kvm", "qemu"):
            return Choice(kind, f"{reason} (probed earlier; delete {remembered} to probe again)")  # type: ignore[arg-type]
    kernel = probe_kernel(cfg)
    if not kernel.is_file():
        return Choice("kvm", f"{kvm} exists (not probed: no {kernel}; `make image` makes it)")
    ok, reason = probe(kernel)
    choice = Choice("kvm" if ok else "qemu", reason)
    remembered.parent.mkdir(parents=True, exist_ok=True)
    remembered.write_text(f"{choice.type}: {reason}\n")
    return choice
