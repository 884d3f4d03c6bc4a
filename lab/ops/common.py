"""What every operation shares: the session (config, nodes, SSH shells, the etcd client),
progress lines with elapsed time, and one snapshot of etcd that knows whose member is whose.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from lab.config import LabConfig
from lab.domain_type import ELECTION_TIMEOUT_SECONDS, SLOWDOWN, DomainType
from lab.domain_type import choose as choose_domain_type
from lab.etcd import Alarm, Etcd, EtcdError, Member, Status, TLSFiles, client_url, host_port
from lab.keys import write_private
from lab.ssh import CONNECT_TIMEOUT, NodeShell, SshError, shell_for
from lab.topology import Node, Topology, build_topology

# Where kubeadm keeps the etcd CA and the API server's etcd client pair on every control plane.
NODE_CERTS = {
    "ca.crt": "/etc/kubernetes/pki/etcd/ca.crt",
    "client.crt": "/etc/kubernetes/pki/apiserver-etcd-client.crt",
    "client.key": "/etc/kubernetes/pki/apiserver-etcd-client.key",
}


class OpFailed(Exception):
    """The operation's condition did not hold (exit 1); the message says which and why."""


class Progress:
    """One line per step: `[ 12.3s] cp2: attempt 2/8: join`."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.t0 = time.monotonic()
        self.stream = stream

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def __call__(self, node: str | None, message: str) -> None:
        where = f"{node}: " if node else ""
        print(
            f"[{self.elapsed:5.1f}s] {where}{message}", file=self.stream or sys.stdout, flush=True
        )


def columns(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows of cells as lines, each column as wide as its widest cell (`lab snapshot list`,
    `lab rehearse`)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


@contextlib.contextmanager
def membership_lock(
    state_dir: Path, what: str, say: Progress, *, worker: str | None = None
) -> Iterator[None]:
    """One etcd membership change (init, a control plane's join or leave, learner cleanup) at a
    time per lab. An interrupted `pulumi up` can leave its `lab join` running while the next
    `pulumi up` starts another: the second waits for the first, then finds the node joined (or
    cleans up after it). A `worker`'s join or leave changes no etcd member: workers go together
    (each holds the lab's lock shared), one change per worker at a time (its own lock)."""
    lab_lock = state_dir / "membership.lock"
    if worker is None:
        with _flocked(lab_lock, fcntl.LOCK_EX, what, say, "one etcd membership change at a time"):
            yield
        return
    node_lock = state_dir / f"membership-{worker}.lock"
    with (
        _flocked(node_lock, fcntl.LOCK_EX, what, say, "one change per node at a time"),
        _flocked(lab_lock, fcntl.LOCK_SH, None, say, "workers wait out an etcd membership change"),
    ):
        yield


@contextlib.contextmanager
def _flocked(path: Path, mode: int, what: str | None, say: Progress, why: str) -> Iterator[None]:
    """Hold an flock on `path`, saying once whom we wait for. An exclusive holder names itself
    in the file (`what`); shared holders, workers, leave it empty."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        waiting = False
        while True:
            try:
                fcntl.flock(f, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    f.seek(0)
                    holder = f.read().strip() or "workers' joins or leaves"
                    say(None, f"waiting for {holder} to finish: {why}")
                    waiting = True
                time.sleep(0.5)
        if what:
            f.truncate(0)
            f.write(f"`lab {what}` (pid {os.getpid()})")
            f.flush()
        try:
            yield
        finally:
            if what:
                f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)


def owns(node: Node, member: Member) -> bool:
    """A member is a node's by its name or, never started (so nameless), by its peer address."""
    return member.name == node.name or (not member.name and member.peer_host == str(node.address))


def endpoint_of(nodes: Sequence[Node], member: Member) -> str:
    """Where to ask a member for its Status: its node's address, else a non-loopback client URL."""
    node = next((n for n in nodes if owns(n, member)), None)
    if node is not None:
        return client_url(node.address)
    for url in member.client_urls:
        if "127.0.0.1" not in url and "localhost" not in url:
            return url
    return client_url(member.peer_host)


@dataclass
class Session:
    """One operation's access to the lab: its config and nodes, SSH shells, one etcd client."""

    cfg: LabConfig
    say: Progress
    etcd_timeout: float = 5.0
    host_keys: dict[str, str] = field(default_factory=dict)  # given, instead of the pinned files
    topo: Topology = field(init=False)
    _shells: dict[str, NodeShell] = field(default_factory=dict, init=False)
    _etcd: Etcd | None = field(default=None, init=False)
    _fetched: bool = field(default=False, init=False)  # certs fetched by this run

    def __post_init__(self) -> None:
        self.topo = build_topology(self.cfg)

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        shells, self._shells = list(self._shells.values()), {}
        await asyncio.gather(*(s.close() for s in shells), return_exceptions=True)
        if self._etcd is not None:
            await self._etcd.close()
            self._etcd = None

    @functools.cached_property
    def domain_type(self) -> DomainType:
        """How the guests run (kvm or qemu): kubeadm's and each SSH and etcd call's timeouts
        follow it."""
        return choose_domain_type(self.cfg).type

    @property
    def slowdown(self) -> float:
        return SLOWDOWN[self.domain_type]

    @property
    def gate_window(self) -> float:
        """The gate's stable window: tuning's, else twice etcd's election timeout here (a member
        that stops hearing its leader campaigns within one): 2 s under KVM, 10 s emulated."""
        window = self.cfg.tuning.gate_min_window_seconds
        return 2 * ELECTION_TIMEOUT_SECONDS[self.domain_type] if window is None else window

    @property
    def poll_interval(self) -> float:
        """How often the gate (and the join's other waits on etcd) ask: tuning's, else a quarter
        of the window, so a window holds several polls."""
        interval = self.cfg.tuning.gate_poll_interval_seconds
        return max(self.gate_window / 4, 0.25) if interval is None else interval

    def shell(self, node: Node) -> NodeShell:
        if node.name not in self._shells:
            host_key = self.host_keys.get(node.name)
            self._shells[node.name] = shell_for(
                self.cfg,
                node,
                host_key=host_key,
                connect_timeout=CONNECT_TIMEOUT * self.slowdown,
            )
        return self._shells[node.name]

    # ------------------------------------------------------------------ etcd

    @property
    def cert_dir(self) -> Path:
        return self.cfg.state_dir / "etcd"

    async def ensure_certs(self) -> TLSFiles:
        """etcd client certs, fetched once over SSH from the first control plane that answers."""
        tls = TLSFiles.in_dir(self.cert_dir)
        if all(p.is_file() for p in tls.paths):
            return tls
        errors = []
        for node in self.topo.control_planes:
            try:
                blobs = {
                    name: await self.shell(node).read_file(path)
                    for name, path in NODE_CERTS.items()
                }
            except SshError as e:
                errors.append(str(e))
                continue
            for name, data in blobs.items():
                write_private(self.cert_dir / name, data)
            self._fetched = True
            self.say(node.name, f"fetched etcd client certificates into {self.cert_dir}")
            return tls
        raise OpFailed("cannot fetch the etcd client certificates: " + "; ".join(errors))

    async def etcd(self) -> Etcd:
        if self._etcd is None:
            tls = await self.ensure_certs()
            endpoints = [client_url(n.address) for n in self.topo.control_planes]
            self._etcd = Etcd(endpoints, tls, timeout=self.etcd_timeout * self.slowdown)
        return self._etcd

    async def snapshot(self) -> Snapshot:
        snap = await take_snapshot(await self.etcd(), self.topo.nodes)
        if snap.list_error and "TLS handshake" in snap.list_error and not self._fetched:
            # A rebuilt cluster has a new CA: the stored client certificates are stale.
            self.say(None, "etcd rejects the stored client certificates: fetching them again")
            for p in TLSFiles.in_dir(self.cert_dir).paths:
                p.unlink(missing_ok=True)
            if self._etcd is not None:
                await self._etcd.close()
                self._etcd = None
            snap = await take_snapshot(await self.etcd(), self.topo.nodes)
        return snap


@dataclass
class Snapshot:
    """etcd as seen at one moment, and which lab node each member belongs to: what the gate,
    cleanup, join, leave, diagnose and verify decide on."""

    members: list[Member]
    statuses: dict[int, Status | str]  # member id -> its endpoint's Status, or why it failed
    alarms: list[Alarm]
    read_error: str | None  # None when a linearizable read succeeded
    list_error: str | None = None  # the member list itself failed
    nodes: Sequence[Node] = ()  # the lab's nodes, to tell whose member is whose

    @property
    def voters(self) -> list[Member]:
        return [m for m in self.members if not m.is_learner]

    @property
    def learners(self) -> list[Member]:
        return [m for m in self.members if m.is_learner]

    @property
    def voter_names(self) -> list[str]:
        return sorted(self.label(m) for m in self.voters)

    @property
    def member_ids(self) -> dict[str, str]:
        """Each member's node (or name) -> its ID in hex."""
        return {self.label(m): m.hex_id for m in self.members}

    def node_of(self, member: Member) -> Node | None:
        return next((n for n in self.nodes if owns(n, member)), None)

    def members_of(self, node: Node) -> list[Member]:
        """The node's members: normally none or one (etcd refuses a second on one peer URL)."""
        return [m for m in self.members if owns(node, m)]

    def is_voter(self, node: Node) -> bool:
        return any(not m.is_learner for m in self.members_of(node))

    @property
    def voting_nodes(self) -> list[Node]:
        return [n for n in self.nodes if self.is_voter(n)]

    def label(self, member: Member) -> str:
        """The member's name; a member never started is named after its node, if it has one."""
        node = self.node_of(member)
        return member.name or (f"{node.name} (not started)" if node else member.label)

    def status(self, m: Member) -> Status | None:
        s = self.statuses.get(m.id)
        return s if isinstance(s, Status) else None

    def healthy(self, m: Member) -> bool:
        """Started, its endpoint answers, it sees a leader and raises no error."""
        s = self.status(m)
        return m.started and s is not None and s.leader != 0 and not s.errors

    @property
    def leader_status(self) -> Status | None:
        for s in self.statuses.values():
            if isinstance(s, Status) and s.leader and s.member_id == s.leader:
                return s
        return None

    @property
    def leader(self) -> Member | None:
        lead = self.leader_status
        return next((m for m in self.members if lead and m.id == lead.member_id), None)


async def take_snapshot(etcd: Etcd, nodes: Sequence[Node]) -> Snapshot:
    """Members, every member's Status (in parallel), alarms and a linearizable read."""
    list_error = None
    try:
        members = await etcd.members(linearizable=True)
    except EtcdError as e:
        list_error = str(e)
        try:
            members = await etcd.members(linearizable=False)
        except EtcdError:
            return Snapshot([], {}, [], str(e), list_error, nodes)
    members.sort(key=lambda m: (not m.name, m.name, m.peer_urls))
    endpoints = [endpoint_of(nodes, m) for m in members]

    async def read() -> str | None:
        try:
            await etcd.linearizable_read()
        except EtcdError as e:
            return str(e)
        return None

    async def alarms() -> list[Alarm]:
        try:
            return await etcd.alarms()
        except EtcdError:
            return []

    statuses, read_error, alarm_list = await asyncio.gather(
        etcd.statuses(endpoints), read(), alarms()
    )
    by_id: dict[int, Status | str] = {}
    for m, endpoint in zip(members, endpoints, strict=True):
        by_id[m.id] = statuses[host_port(endpoint)]
    return Snapshot(members, by_id, alarm_list, read_error or list_error, list_error, nodes)
