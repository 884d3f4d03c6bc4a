"""The etcd port: member list/add/remove/promote, a leader move, per-endpoint status, alarms, a
linearizable read.

Everything else in `lab` talks to etcd through this module and its plain dataclasses, so the client
library (etcd3aio over grpc.aio, with mutual TLS) can be swapped without touching the operations.
Each call is bounded by `timeout`; cluster-wide calls try the endpoints in order until one answers.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # gRPC's own log lines would mix with ours

import grpc
from etcd3aio import Etcd3Client
from etcd3aio import EtcdError as _LibError

CLIENT_PORT, PEER_PORT = 2379, 2380
# gRPC's long connect errors, shortened to what a person needs.
_SHORT = {
    "Connection refused": "connection refused",
    "andshake failed": "TLS handshake failed (a client certificate of another cluster CA?)",
    "Deadline Exceeded": "timed out",
    "Timeout occurred": "timed out",
    "No route to host": "no route to host",
    "Network is unreachable": "network unreachable",
}
ALARMS = {0: "NONE", 1: "NOSPACE", 2: "CORRUPT"}


class EtcdError(Exception):
    """An etcd call failed; the message carries etcd's own words ('too many learner ...')."""


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_dir(cls, folder: Path) -> TLSFiles:
        return cls(folder / "ca.crt", folder / "client.crt", folder / "client.key")

    @property
    def paths(self) -> tuple[Path, Path, Path]:
        return (self.ca, self.cert, self.key)


@dataclass(frozen=True)
class Member:
    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool

    @property
    def started(self) -> bool:
        """etcd lists a member that was added but never started with an empty name."""
        return bool(self.name)

    @property
    def hex_id(self) -> str:
        return f"{self.id:x}"

    @property
    def peer_host(self) -> str:
        return (urlsplit(self.peer_urls[0]).hostname or "") if self.peer_urls else ""

    @property
    def label(self) -> str:
        return self.name or f"{self.hex_id} (not started, {', '.join(self.peer_urls)})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.hex_id,
            "name": self.name,
            "peer_urls": list(self.peer_urls),
            "client_urls": list(self.client_urls),
            "is_learner": self.is_learner,
            "started": self.started,
        }


@dataclass(frozen=True)
class Status:
    """One endpoint's Status: who it thinks leads, raft term/index, applied index, DB size."""

    endpoint: str
    member_id: int
    leader: int
    raft_term: int
    raft_index: int
    applied_index: int
    db_size: int
    is_learner: bool
    version: str
    errors: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "member_id": f"{self.member_id:x}",
            "leader": f"{self.leader:x}",
            "raft_term": self.raft_term,
            "raft_index": self.raft_index,
            "applied_index": self.applied_index,
            "db_size": self.db_size,
            "is_learner": self.is_learner,
            "version": self.version,
            "errors": list(self.errors),
        }


@dataclass(frozen=True)
class Alarm:
    member_id: int
    alarm: str


def host_port(endpoint: str) -> str:
    """'https://10.30.0.11:2379' or '10.30.0.11:2379' -> '10.30.0.11:2379'."""
    parts = urlsplit(endpoint if "://" in endpoint else "https://" + endpoint)
    return f"{parts.hostname}:{parts.port or CLIENT_PORT}"


def client_url(address: object) -> str:
    return f"https://{address}:{CLIENT_PORT}"


def describe(error: BaseException) -> str:
    """etcd's own words where there are some ('etcdserver: ...'), else the error's kind."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, grpc.aio.AioRpcError):
            details = cause.details() or ""
            for needle, short in _SHORT.items():
                if needle in details:
                    details = short
                    break
            return f"{cause.code().name}: {details}".rstrip(": ")
        cause = cause.__cause__
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__


class Etcd:
    """A client for one etcd cluster over mutual TLS, given the client endpoints to try."""

    def __init__(self, endpoints: Sequence[str], tls: TLSFiles, *, timeout: float = 5.0) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self.endpoints = [host_port(e) for e in endpoints]
        self.timeout = timeout
        self._ca, self._cert, self._key = (p.read_bytes() for p in tls.paths)
        self._clients: dict[str, Etcd3Client] = {}

    async def __aenter__(self) -> Etcd:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            await c.close()

    async def _client(self, endpoint: str) -> Etcd3Client:
        endpoint = host_port(endpoint)
        if endpoint not in self._clients:
            client = Etcd3Client(
                [endpoint],
                rpc_max_attempts=2,
                ca_cert=self._ca,
                cert_chain=self._cert,
                cert_key=self._key,
            )
            await client.connect()
            self._clients[endpoint] = client
        return self._clients[endpoint]

    async def _call(self, endpoint: str, what: str, fn: Any, *, seconds: float = 0) -> Any:
        """Run fn(client) against one endpoint, mapping every failure to EtcdError; it has the
        client's timeout (or `seconds`), and one more for the connection."""
        try:
            client = await self._client(endpoint)
            async with asyncio.timeout((seconds or self.timeout) + 1):
                return await fn(client)
        except (_LibError, grpc.aio.AioRpcError, TimeoutError, OSError) as e:
            raise EtcdError(f"{what} on {endpoint}: {describe(e)}") from e

    async def _any(self, what: str, fn: Any, *, retry_all: bool = True, seconds: float = 0) -> Any:
        """Try each endpoint in order; a non-transient etcd error is final (it came from quorum)."""
        errors = []
        for endpoint in self.endpoints:
            try:
                return await self._call(endpoint, what, fn, seconds=seconds)
            except EtcdError as e:
                errors.append(str(e))
                if not retry_all and not _transient(e):
                    raise
        raise EtcdError("; ".join(errors))

    async def members(self, *, linearizable: bool = True) -> list[Member]:
        t = self.timeout
        resp = await self._any(
            "member list",
            lambda c: c.cluster.member_list(linearizable=linearizable, timeout=t),
        )
        return [_member(m) for m in resp.members]

    async def add_member(self, peer: str, *, learner: bool = True) -> Member:
        t = self.timeout
        resp = await self._any(
            "member add",
            lambda c: c.cluster.member_add([peer], is_learner=learner, timeout=t, max_attempts=1),
            retry_all=False,
        )
        return _member(resp.member)

    async def remove_member(self, member_id: int, *, wait: float = 15.0) -> None:
        """Remove a member, retried for up to `wait` seconds while etcd refuses ('unhealthy
        cluster': a voter's peers connected for less than 5 s) or does not answer in time (HA
        run 16: a loaded cluster). A removal whose reply was lost answers 'member not found'
        next time: done."""
        t = self.timeout
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            try:
                await self._any(
                    "member remove",
                    lambda c: c.cluster.member_remove(member_id, timeout=t, max_attempts=1),
                    retry_all=False,
                )
                return
            except EtcdError as e:
                if "member not found" in str(e):
                    return
                again = "unhealthy cluster" in str(e) or _transient(e)
                if not again or asyncio.get_running_loop().time() > deadline:
                    raise
            await asyncio.sleep(0.5)

    async def promote(self, member_id: int) -> None:
        t = self.timeout
        await self._any(
            "member promote",
            lambda c: c.cluster.member_promote(member_id, timeout=t, max_attempts=1),
            retry_all=False,
        )

    async def move_leader(self, leader_endpoint: str, target_id: int) -> None:
        """Hand leadership to `target_id`: only the leader takes this, sent to its endpoint."""
        t = self.timeout
        await self._call(
            leader_endpoint,
            "move leader",
            lambda c: c.maintenance.move_leader(target_id, timeout=t, max_attempts=1),
        )

    async def status(self, endpoint: str) -> Status:
        t = self.timeout
        r = await self._call(endpoint, "status", lambda c: c.maintenance.status(timeout=t))
        return Status(
            endpoint=host_port(endpoint),
            member_id=r.header.member_id,
            leader=r.leader,
            raft_term=r.raftTerm,
            raft_index=r.raftIndex,
            applied_index=r.raftAppliedIndex,
            db_size=r.dbSize,
            is_learner=r.isLearner,
            version=r.version,
            errors=tuple(r.errors),
        )

    async def statuses(self, endpoints: Sequence[str]) -> dict[str, Status | str]:
        """Status of every endpoint, in parallel; an endpoint that fails maps to its error text."""

        async def one(e: str) -> Status | str:
            try:
                return await self.status(e)
            except EtcdError as err:
                return str(err)

        results = await asyncio.gather(*(one(e) for e in endpoints))
        return dict(zip([host_port(e) for e in endpoints], results, strict=True))

    async def alarms(self) -> list[Alarm]:
        t = self.timeout
        resp = await self._any("alarm list", lambda c: c.maintenance.alarms(timeout=t))
        return [Alarm(a.memberID, ALARMS.get(a.alarm, str(a.alarm))) for a in resp.alarms]

    async def linearizable_read(self, key: str = "/lab/gate") -> None:
        """A quorum read: succeeds only while a leader commits with a majority."""
        t = self.timeout
        await self._any("linearizable read", lambda c: c.kv.get(key, timeout=t))

    async def save_snapshot(self, path: Path) -> int:
        """The backend database, as `etcdctl snapshot save` writes it; returns its size."""

        seconds = self.timeout * 12  # the whole database, streamed

        async def stream(c: Any) -> int:
            with path.open("wb") as out:
                async for chunk in c.maintenance.snapshot(timeout=seconds):
                    out.write(chunk)
            return path.stat().st_size

        size: int = await self._any("snapshot", stream, seconds=seconds)
        return size

    async def put(self, key: str, value: str) -> None:
        t = self.timeout
        await self._any("put", lambda c: c.kv.put(key, value, timeout=t))

    async def get(self, key: str) -> str | None:
        t = self.timeout
        resp = await self._any("get", lambda c: c.kv.get(key, timeout=t))
        return resp.kvs[0].value.decode() if resp.kvs else None


def _transient(e: EtcdError) -> bool:
    text = str(e)
    return any(s in text for s in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "timed out", "Connect"))


def _member(m: Any) -> Member:
    return Member(
        id=m.ID,
        name=m.name,
        peer_urls=tuple(m.peerURLs),
        client_urls=tuple(m.clientURLs),
        is_learner=m.isLearner,
    )
