"""Engine tier: the real Pulumi CLI, language host and libvirt provider (built by
engine/build.sh into .tools/bin), run through scripts/pulumi against a real libvirtd.

The libvirtd is the Debian one, started by the `libvirtd` fixture inside a network
namespace the fixture creates, with its own config, state and socket directories
(bind-mounted over /etc/libvirt, /var/lib/libvirt, /run/libvirt, ... in a private
mount namespace), so the lab bridge and dnsmasq exist only inside that namespace and
nothing of the host's libvirt is read or changed. Its unix socket lives in a temp
directory that the root namespace reaches.

Nothing is skipped: no root, a missing binary or a libvirtd that does not come up
FAILS the test with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PULUMI = ROOT / "scripts" / "pulumi"
TOOLS = ROOT / ".tools" / "bin"
ENGINE_BINARIES = (
    "pulumi",
    "pulumi-language-python",
    "pulumi-resource-libvirt",
    "pulumi-resource-command",
)
SYSTEM_BINARIES = ("libvirtd", "virsh", "qemu-img", "qemu-system-x86_64", "ip", "unshare")

# libvirt's system directories, each replaced by a private copy in the test's mounts.
LIBVIRT_DIRS = (
    "/etc/libvirt",
    "/var/lib/libvirt",
    "/run/libvirt",
    "/var/cache/libvirt",
    "/var/log/libvirt",
)


def require_engine() -> None:
    """Fail (never skip) when the tier cannot run here, saying what to do."""
    if os.geteuid() != 0:
        pytest.fail("the engine tier needs root (network namespace, libvirtd)")
    missing = [b for b in ENGINE_BINARIES if not (TOOLS / b).is_file()]
    if missing:
        pytest.fail(f"engine binaries missing in .tools/bin: {missing}; run engine/build.sh")
    missing = [b for b in SYSTEM_BINARIES if shutil.which(b) is None]
    if shutil.which("genisoimage") is None and shutil.which("mkisofs") is None:
        missing.append("genisoimage")
    if missing:
        pytest.fail(f"system binaries missing: {missing}; `make test-engine` installs them")
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.fail(
            ".venv missing: python3 -m venv .venv && .venv/bin/pip install -r requirements.lock"
        )


@dataclass
class Libvirtd:
    netns: str
    uri: str
    tmp: Path

    def virsh(self, *args: str) -> str:
        out = subprocess.run(
            ["virsh", "-c", self.uri, *args], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, f"virsh {' '.join(args)} failed: {out.stderr}"
        return out.stdout


def _write_config(tmp: Path) -> None:
    """Private copies of libvirt's directories, and configs pointing at the temp dir."""
    for d in LIBVIRT_DIRS:
        (tmp / d.strip("/").replace("/", "_")).mkdir(parents=True)
    etc = tmp / "etc_libvirt"
    shutil.rmtree(etc)
    shutil.copytree("/etc/libvirt", etc, symlinks=True)
    # No autostarted "default" network: only the test's objects exist in this libvirtd.
    shutil.rmtree(etc / "qemu" / "networks", ignore_errors=True)
    (etc / "qemu" / "networks" / "autostart").mkdir(parents=True)
    (tmp / "sock").mkdir()
    (tmp / "libvirtd.conf").write_text(
        f'unix_sock_dir = "{tmp}/sock"\n'
        'unix_sock_rw_perms = "0700"\n'
        'auth_unix_rw = "none"\nauth_unix_ro = "none"\n'
        f'log_outputs = "3:file:{tmp}/libvirtd.log"\n'
    )
    # Guests run as root on files in the temp dir; console to a file (no virtlogd).
    (etc / "qemu.conf").write_text(
        'user = "root"\ngroup = "root"\ndynamic_ownership = 0\nremember_owner = 0\n'
        'security_driver = "none"\nstdio_handler = "file"\n'
    )


@pytest.fixture(scope="session")
def libvirtd(tmp_path_factory):
    require_engine()
    tmp = tmp_path_factory.mktemp("libvirtd")
    netns = f"labengine{os.getpid()}"
    _write_config(tmp)
    for d in LIBVIRT_DIRS:
        Path(d).mkdir(parents=True, exist_ok=True)  # mount points
    mounts = "".join(
        f'mount --bind "{tmp}/{d.strip("/").replace("/", "_")}" {d}\n' for d in LIBVIRT_DIRS
    )
    script = (
        "set -e\n"
        "mount --make-rprivate /\n"
        f"{mounts}"
        "ip link set lo up\n"
        f'exec libvirtd -f "{tmp}/libvirtd.conf" -p "{tmp}/libvirtd.pid"\n'
    )
    subprocess.run(["ip", "netns", "add", netns], check=True)
    with open(tmp / "libvirtd.out", "w") as log:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "unshare", "--mount", "sh", "-c", script],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    uri = f"qemu+unix:///system?socket={tmp}/sock/libvirt-sock"
    daemon = Libvirtd(netns, uri, tmp)
    try:
        # Wait (bounded) for the socket to answer.
        for _ in range(60):
            if proc.poll() is not None:
                logs = [tmp / "libvirtd.out", tmp / "libvirtd.log"]
                text = "".join(p.read_text() for p in logs if p.exists())
                pytest.fail(f"libvirtd exited:\n{text}")
            ok = subprocess.run(["virsh", "-c", uri, "version"], capture_output=True)
            if ok.returncode == 0:
                break
            time.sleep(0.5)
        else:
            pytest.fail("libvirtd did not answer on its socket within 30 s")
        yield daemon
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # Guests and dnsmasq left behind by a failed test live in the namespace.
        pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
        for pid in pids.stdout.split():
            subprocess.run(["kill", "-9", pid], check=False)
        subprocess.run(["ip", "netns", "del", netns], check=False)


@dataclass
class Stack:
    """A temporary stack of this project (state in .lab/pulumi-state), driven through
    scripts/pulumi, optionally inside a network namespace (to reach a test's nodes)."""

    name: str
    env: dict[str, str]
    netns: str | None = None
    cwd: Path = ROOT

    @classmethod
    def create(cls, suffix: str, config: dict[str, str], netns: str | None = None) -> Stack:
        name = f"enginetest-{suffix}-{os.getpid()}"
        # No plugin downloads: the tier must not reach outside this machine.
        env = dict(
            os.environ,
            LAB_STACK=name,
            PULUMI_NON_INTERACTIVE="true",
            PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION="true",
            PULUMI_DEBUG_COMMANDS="true",  # enables --event-log: the engine's own record
        )
        env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{env['PATH']}"
        stack = cls(name, env, netns)
        stack.config(config)
        return stack

    def argv(self) -> list[str]:
        return [*(["ip", "netns", "exec", self.netns] if self.netns else []), str(PULUMI)]

    def config(self, values: dict[str, str]) -> None:
        for key, value in values.items():
            self.pulumi("config", "set", key, value)

    def pulumi(self, *args: str, check: bool = True, timeout: int = 900):
        out = subprocess.run(
            [*self.argv(), *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        print(f"$ pulumi {' '.join(args)} -> exit {out.returncode}\n{out.stdout}{out.stderr}")
        if check:
            assert out.returncode == 0, (
                f"pulumi {' '.join(args)} exited {out.returncode}\n"
                f"--- stdout\n{out.stdout}\n--- stderr\n{out.stderr}"
            )
        return out

    def remove(self) -> None:
        self.pulumi("stack", "rm", "--yes", "--force", "--stack", self.name, check=False)
        (ROOT / f"Pulumi.{self.name}.yaml").unlink(missing_ok=True)


@pytest.fixture
def make_stack():
    """make_stack(suffix, config) -> a Stack, removed afterwards with its Pulumi.<stack>.yaml."""
    made: list[Stack] = []

    def make(suffix: str, config: dict[str, str]) -> Stack:
        made.append(Stack.create(suffix, config))
        return made[-1]

    yield make
    for stack in made:
        stack.remove()
