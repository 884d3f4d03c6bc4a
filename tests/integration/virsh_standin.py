"""Stand-in `virsh` on the harness's lab host: the commands `lab snapshot` and `lab status` use,
on the harness's nodes (network namespaces) instead of libvirt domains; domain `labit-cp1` is node
cp1 (the harness's machines file maps them).

It stands in for libvirt's internal snapshot of a paused guest (its disks and its memory):
- `suspend`/`resume`: SIGSTOP/SIGCONT every process the node's stand-ins started (etcd, the API
  server listener, keepalived, haproxy), as a paused guest runs none of them. Deviation: the node's
  sshd keeps answering (nothing connects while the lab is paused).
- `snapshot-create-as D NAME` on a paused node: a copy of its /etc/kubernetes and /var/lib/etcd,
  taken while its etcd is stopped: what a power cut would leave, from which etcd recovers by its
  WAL; every node is copied at the same paused moment, so the members agree. Deviation: the
  processes' memory is not kept, so after `snapshot-revert` the node's etcd and API server start
  again from those files at `resume` (a real revert continues the saved processes: the e2e tier
  reverts real guests).
- The node's disk is a small real qcow2 that the command also gives an internal snapshot NAME
  (`qemu-img snapshot -c`, deleted with it), so `lab` reads its size with the real `qemu-img
  info`; it holds no memory state (vm-state-size 0), where a real guest's holds its memory.
- `snapshot-revert D NAME --paused`, `snapshot-list D --name`, `snapshot-delete D NAME`,
  `list --all [--name]`, `domstats D --block` (that disk).
Anything else exits 1 with virsh's wording for an unknown command.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

KEPT = ("kube", "etcd")  # the node's /etc/kubernetes and /var/lib/etcd
STATIC_PODS = ("etcd", "apiserver")  # what the kubelet would start again from the files


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


class Machine:
    def __init__(self, name: str, entry: dict[str, Any]) -> None:
        self.name = name
        self.dir = Path(entry["dir"])
        self.holder = int(entry["holder"])
        self.state_file = self.dir / "machine.json"
        self.snapshots = self.dir / "snapshots"

    @property
    def state(self) -> dict[str, Any]:
        if not self.state_file.is_file():
            return {"state": "running", "reverted": False}
        loaded: dict[str, Any] = json.loads(self.state_file.read_text())
        return loaded

    def set_state(self, **values: Any) -> None:
        self.state_file.write_text(json.dumps(self.state | values))

    def pids(self) -> dict[str, int]:
        """The node's processes by pid file name (sshd's excluded), those alive."""
        out = {}
        for f in (self.dir / "run").glob("*.pid"):
            if f.stem == "sshd":
                continue
            try:
                pid = int(f.read_text())
                os.kill(pid, 0)
            except (OSError, ValueError):
                continue
            out[f.stem] = pid
        return out

    def signal_all(self, sig: int) -> None:
        for pid in self.pids().values():
            os.kill(pid, sig)

    @property
    def disk(self) -> Path:
        return self.dir / "disk.qcow2"

    def qemu_img(self, *args: str) -> None:
        if not self.disk.exists():
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(self.disk), "1M"], check=True
            )
        subprocess.run(["qemu-img", *args, str(self.disk)], check=True, capture_output=True)


def copy_into(src: Path, dst: Path) -> None:
    """Make dst hold exactly src's files, keeping dst itself (a mount point of the node)."""
    dst.mkdir(parents=True, exist_ok=True)
    for child in dst.iterdir():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)


def run(machines: dict[str, Machine], args: list[str]) -> int:
    if not args:
        return fail("no command")
    cmd, rest = args[0], args[1:]
    if cmd == "list":
        if "--name" in rest:
            print("\n".join(machines))
            return 0
        print(" Id   Name   State\n--------------------")
        for i, (name, m) in enumerate(machines.items(), start=1):
            print(f" {i}    {name}   {m.state['state']}")
        return 0
    if not rest or rest[0] not in machines:
        return fail(f"failed to get domain '{rest[0] if rest else ''}'")
    m, rest = machines[rest[0]], rest[1:]
    names = sorted(p.name for p in m.snapshots.glob("*")) if m.snapshots.is_dir() else []
    if cmd == "suspend":
        m.signal_all(signal.SIGSTOP)
        m.set_state(state="paused")
        print(f"Domain '{m.name}' suspended")
    elif cmd == "resume":
        if m.state["reverted"]:
            subprocess.run(
                [
                    "nsenter",
                    "-t",
                    str(m.holder),
                    "-m",
                    "-n",
                    "--wd=/",
                    str(m.dir / "bin" / "kubeadm"),
                    "start-static-pods",
                ],
                check=True,
                capture_output=True,
            )
        m.signal_all(signal.SIGCONT)
        m.set_state(state="running", reverted=False)
        print(f"Domain '{m.name}' resumed")
    elif cmd == "snapshot-create-as":
        if m.state["state"] != "paused":
            return fail("stand-in: snapshot-create-as needs a paused domain (the lab pauses all)")
        target = m.snapshots / rest[0]
        if target.exists():
            return fail(f"domain snapshot {rest[0]} already exists")
        for d in KEPT:
            shutil.copytree(m.dir / d, target / d, symlinks=True)
        m.qemu_img("snapshot", "-c", rest[0])
        print(f"Domain snapshot {rest[0]} created")
    elif cmd == "snapshot-revert":
        if rest[0] not in names:
            return fail(
                f"Domain snapshot not found: no domain snapshot with matching name '{rest[0]}'"
            )
        pids = m.pids()
        for what in STATIC_PODS:
            if what in pids:
                os.kill(pids[what], signal.SIGKILL)
                (m.dir / "run" / f"{what}.pid").unlink(missing_ok=True)
        for d in KEPT:
            copy_into(m.snapshots / rest[0] / d, m.dir / d)
        m.set_state(state="paused", reverted=True)
        print(f"Domain snapshot {rest[0]} reverted")
    elif cmd == "snapshot-list":
        print("\n".join(names))
    elif cmd == "snapshot-delete":
        if rest[0] not in names:
            return fail(
                f"Domain snapshot not found: no domain snapshot with matching name '{rest[0]}'"
            )
        shutil.rmtree(m.snapshots / rest[0])
        m.qemu_img("snapshot", "-d", rest[0])
        print(f"Domain snapshot {rest[0]} deleted")
    elif cmd == "domstats":
        print(f"Domain: '{m.name}'\n  block.count=1\n  block.0.name=vda\n  block.0.path={m.disk}")
    else:
        return fail(f"unknown command: '{cmd}'")
    return 0


def main() -> int:
    args = sys.argv[1:]
    machines_file = Path(args.pop(0))
    if args[:1] == ["-c"]:
        args = args[2:]  # the URI: there is one lab here
    table = json.loads(machines_file.read_text())
    return run({name: Machine(name, entry) for name, entry in table.items()}, args)


if __name__ == "__main__":
    sys.exit(main())
