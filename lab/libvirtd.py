"""A private libvirtd for hosts that run none (a fresh machine, CI): Debian's libvirtd, started in
a network namespace of its own, with its directories bind-mounted from a folder of ours in a
mount namespace of its own. The lab bridge, dnsmasq and the guests exist only in that namespace,
and nothing of the host's libvirt is read or changed.

`lab libvirtd start` starts it (or says the host's libvirtd is used), `lab libvirtd stop` stops it
and everything left in its namespace, and `lab libvirtd exec -- CMD` runs CMD inside its
namespaces, where `qemu:///system` is the private daemon and the guests' addresses answer. Every
other `lab` command enters them by itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lab.config import ConfigError

# libvirt's system directories, each replaced by a folder of ours in the daemon's mount namespace.
LIBVIRT_DIRS = (
    "/etc/libvirt",
    "/var/lib/libvirt",
    "/run/libvirt",
    "/var/cache/libvirt",
    "/var/log/libvirt",
)
START_TIMEOUT = 30.0


class LibvirtdError(Exception):
    """The private libvirtd cannot start or be reached; the message says why."""


def _folder(root: Path, system_dir: str) -> Path:
    return root / system_dir.strip("/").replace("/", "_")


@dataclass(frozen=True)
class PrivateLibvirtd:
    """One private libvirtd: its folder (`root`) and its network namespace."""

    root: Path
    netns: str

    @property
    def socket(self) -> Path:
        """Its socket, as the host sees it (inside its namespace: /run/libvirt/libvirt-sock)."""
        return _folder(self.root, "/run/libvirt") / "libvirt-sock"

    @property
    def uri(self) -> str:
        """The URI from outside its namespaces; inside them, qemu:///system is the same."""
        return f"qemu+unix:///system?socket={self.socket}"

    @property
    def pid_file(self) -> Path:
        return self.root / "libvirtd.pid"

    def pid(self) -> int | None:
        """The daemon's pid while it runs."""
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def start(self) -> None:
        """Start the daemon (in the background, surviving this process) and wait for it."""
        missing = [b for b in ("libvirtd", "virsh", "ip", "unshare") if not shutil.which(b)]
        if missing:
            raise LibvirtdError(
                f"{', '.join(missing)} missing: apt install libvirt-daemon-system libvirt-clients"
                " qemu-system-x86 dnsmasq-base iproute2 util-linux (`make up` does)"
            )
        if os.geteuid() != 0:
            raise LibvirtdError("a private libvirtd needs root (network and mount namespaces)")
        self._write_config()
        for d in LIBVIRT_DIRS:
            Path(d).mkdir(parents=True, exist_ok=True)  # mount points
        mounts = "".join(f'mount --bind "{_folder(self.root, d)}" {d}\n' for d in LIBVIRT_DIRS)
        script = (
            "set -e\nmount --make-rprivate /\n"
            f"{mounts}"
            "ip link set lo up\n"
            f'exec libvirtd -f "{self.root}/libvirtd.conf" -p "{self.pid_file}"\n'
        )
        if subprocess.run(["ip", "netns", "add", self.netns], capture_output=True).returncode:
            raise LibvirtdError(
                f"network namespace {self.netns} already exists without a running libvirtd;"
                f" remove it (ip netns del {self.netns}) or run `lab libvirtd stop`"
            )
        with open(self.root / "libvirtd.out", "w") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, "unshare", "--mount", "sh", "-c", script],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.stop()
                raise LibvirtdError(f"libvirtd exited:\n{self._logs()}")
            ok = subprocess.run(["virsh", "-c", self.uri, "version"], capture_output=True)
            if ok.returncode == 0 and self.pid():
                return
            time.sleep(0.5)
        self.stop()
        raise LibvirtdError(
            f"libvirtd did not answer within {START_TIMEOUT:.0f} s:\n{self._logs()}"
        )

    def stop(self) -> None:
        """Stop the daemon and whatever is left in its namespace (guests, dnsmasq)."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            for _ in range(60):
                if self.pid() is None:
                    break
                time.sleep(0.5)
        left = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True)
        for p in left.stdout.split():
            subprocess.run(["kill", "-9", p], check=False)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)
        self.pid_file.unlink(missing_ok=True)

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside the daemon's namespaces, in the current directory."""
        pid = self.pid()
        if pid is None:
            raise LibvirtdError(f"the private libvirtd ({self.root}) is not running")
        return ["nsenter", "-t", str(pid), "-m", "-n", f"--wd={Path.cwd()}", "--", *argv]

    def inside(self) -> bool:
        """Whether this process already runs in the daemon's network namespace."""
        pid = self.pid()
        if pid is None:
            return False
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino

    def _write_config(self) -> None:
        """Its copies of libvirt's directories (kept across restarts: they hold the lab's
        networks, pools and volumes), guests as root, consoles to files."""
        for d in LIBVIRT_DIRS:
            _folder(self.root, d).mkdir(parents=True, exist_ok=True)
        etc = _folder(self.root, "/etc/libvirt")
        if not (etc / "qemu.conf").exists():
            shutil.copytree("/etc/libvirt", etc, symlinks=True, dirs_exist_ok=True)
            # No autostarted "default" network: only the lab's objects exist in this libvirtd.
            shutil.rmtree(etc / "qemu" / "networks", ignore_errors=True)
            (etc / "qemu" / "networks" / "autostart").mkdir(parents=True)
        (self.root / "libvirtd.conf").write_text(
            'unix_sock_rw_perms = "0700"\n'
            'auth_unix_rw = "none"\nauth_unix_ro = "none"\n'
            f'log_outputs = "3:file:{self.root}/libvirtd.log"\n'
        )
        (etc / "qemu.conf").write_text(
            'user = "root"\ngroup = "root"\ndynamic_ownership = 0\nremember_owner = 0\n'
            'security_driver = "none"\nstdio_handler = "file"\n'
        )

    def _logs(self) -> str:
        logs = [self.root / "libvirtd.out", self.root / "libvirtd.log"]
        return "".join(p.read_text()[-3000:] for p in logs if p.exists())


def for_lab(state_dir: Path, cluster: str) -> PrivateLibvirtd:
    """The lab's own private libvirtd: under the state folder, namespace named for the cluster."""
    return PrivateLibvirtd((state_dir / "libvirtd").resolve(), f"{cluster}-libvirt")


def reenter(daemon: PrivateLibvirtd, argv: list[str]) -> None:
    """Run this `lab` command again inside the private libvirtd's namespaces, if it runs and
    this process is not there yet; otherwise return and run here."""
    if daemon.pid() is None or daemon.inside():
        return
    try:
        command = daemon.command([sys.executable, "-m", "lab.cli", *argv])
    except LibvirtdError as e:
        raise ConfigError(str(e)) from None
    os.execvp(command[0], command)
