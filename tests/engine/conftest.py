"""Engine tier: the real Pulumi CLI, language host and libvirt provider (built by
engine/build.sh into .tools/bin), run through scripts/pulumi against a real libvirtd.

The libvirtd is the Debian one, started by the `libvirtd` fixture as lab.libvirtd starts the
lab's own private daemon: in a network namespace of the test's, with its directories
bind-mounted from the test's temp folder in a private mount namespace, so the lab bridge and
dnsmasq exist only inside that namespace and nothing of the host's libvirt is read or changed.
Its unix socket is in the temp folder, which the root namespace reaches.

Nothing is skipped: no root, a missing binary or a libvirtd that does not come up
FAILS the test with the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.libvirtd import LibvirtdError, PrivateLibvirtd

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


@pytest.fixture(scope="session")
def libvirtd(tmp_path_factory):
    require_engine()
    tmp = tmp_path_factory.mktemp("libvirtd")
    daemon = PrivateLibvirtd(tmp / "daemon", f"labengine{os.getpid()}")
    try:
        daemon.start()
    except LibvirtdError as e:
        pytest.fail(str(e))
    try:
        yield Libvirtd(daemon.netns, daemon.uri, tmp)
    finally:
        daemon.stop()


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
        """Run pulumi; past `timeout`, kill it with its plugins and program, release the stack's
        lock (so the next case fails on its own, not on this one's lock) and fail with the
        output's tail, which says the step it stopped in."""
        proc = subprocess.Popen(
            [*self.argv(), *args],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for pid in process_tree(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            self.pulumi("cancel", "--yes", check=False, timeout=120)
            tail = "\n".join((stdout + stderr).splitlines()[-60:])
            pytest.fail(
                f"pulumi {' '.join(args)} did not finish in {timeout} s; its last lines:\n{tail}"
            )
        out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
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


def process_tree(root: int) -> list[int]:
    """`root` and every process under it, parents first. Not its process group: the engine
    starts each plugin in a group of its own, so a killed group left the command provider and
    the `lab join` it ran going on (HA run 27), and the next case waited for that join."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # a process that ended as we read
            parent = int(stat.read_text().rsplit(")", 1)[-1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    tree = [root]
    for pid in tree:
        tree.extend(children.get(pid, []))
    return tree


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
