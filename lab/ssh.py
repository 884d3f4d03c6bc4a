"""The node port: run a command on a node, read and write a file, over SSH with a pinned host key.

The host key comes from the lab's state folder (lab.keys.pinned_host_key): a node that presents any
other key is an error, never a prompt. Connecting is bounded (`connect_timeout` per attempt), every
command can be bounded too, and when the login user is not root privileged commands run through
`sudo -n` (never waiting for a password).
"""

from __future__ import annotations

import asyncio
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType

import asyncssh

from lab.config import LabConfig
from lab.keys import pinned_host_key
from lab.topology import Node

CONNECT_TIMEOUT = 5.0


class SshError(Exception):
    """The node could not be reached or refused us; the message names the node and the cause.

    kind: "unreachable" (worth waiting for), "hostkey" or "auth" (bad input: never retried),
    "command" (a command failed or timed out), "lost" (the connection dropped mid-command).
    """

    def __init__(self, message: str, kind: str = "command") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Result:
    node: str
    command: str
    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    @property
    def output(self) -> str:
        """stderr then stdout, stripped: what to show when the command failed."""
        return "\n".join(s for s in (self.stderr.strip(), self.stdout.strip()) if s)


class NodeShell:
    """One node's SSH session, opened on first use and reused until close()."""

    def __init__(
        self,
        name: str,
        address: str,
        user: str,
        key_path: Path,
        host_key: str,
        *,
        port: int = 22,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.name, self.address, self.user, self.port = name, address, user, port
        self.key_path, self.host_key, self.connect_timeout = key_path, host_key, connect_timeout
        self._conn: asyncssh.SSHClientConnection | None = None
        self._lock = asyncio.Lock()  # parallel commands on one node share one connection

    async def __aenter__(self) -> NodeShell:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            await self._conn.wait_closed()
            self._conn = None

    def _where(self) -> str:
        return f"{self.name} ({self.user}@{self.address}:{self.port})"

    async def connect(self) -> asyncssh.SSHClientConnection:
        async with self._lock:
            if self._conn is None or self._conn.is_closed():
                self._conn = await self._connect()
            return self._conn

    async def _connect(self) -> asyncssh.SSHClientConnection:
        if not self.key_path.is_file():
            raise SshError(
                f"{self.name}: the SSH private key {self.key_path} does not exist", "auth"
            )
        try:
            pinned = asyncssh.import_public_key(self.host_key)
        except (asyncssh.KeyImportError, ValueError) as e:
            raise SshError(
                f"{self.name}: the pinned host key is not readable: {e}", "hostkey"
            ) from None
        try:
            return await asyncio.wait_for(
                asyncssh.connect(
                    self.address,
                    self.port,
                    username=self.user,
                    client_keys=[str(self.key_path)],
                    known_hosts=([pinned], [], []),
                    connect_timeout=self.connect_timeout,
                    login_timeout=self.connect_timeout,
                    agent_path=None,
                    config=None,
                    keepalive_interval=10,
                ),
                self.connect_timeout + 1,
            )
        except asyncssh.HostKeyNotVerifiable:
            raise SshError(
                f"{self._where()}: host key mismatch: the node does not present the pinned host"
                f" key ({self.host_key.split()[0]}); refusing to connect",
                "hostkey",
            ) from None
        except asyncssh.PermissionDenied:
            raise SshError(
                f"{self._where()}: the SSH key {self.key_path} was refused", "auth"
            ) from None
        except TimeoutError:
            raise SshError(
                f"{self._where()}: unreachable: no SSH answer within {self.connect_timeout:g}s",
                "unreachable",
            ) from None
        except (OSError, asyncssh.Error) as e:
            raise SshError(f"{self._where()}: unreachable: {e}", "unreachable") from None

    def _wrap(self, command: str, sudo: bool) -> str:
        if sudo and self.user != "root":
            return "sudo -n sh -c " + shlex.quote(command)
        return command

    async def run_bytes(
        self,
        command: str,
        *,
        input: bytes | None = None,
        timeout: float | None = None,
        sudo: bool = True,
    ) -> tuple[int, bytes, bytes]:
        conn = await self.connect()
        try:
            r = await conn.run(
                self._wrap(command, sudo), input=input, encoding=None, timeout=timeout, check=False
            )
        except asyncssh.TimeoutError as e:
            raise SshError(f"{self.name}: `{command}` did not finish within {timeout:g}s") from e
        except (OSError, asyncssh.Error) as e:
            self._conn = None
            raise SshError(
                f"{self._where()}: connection lost while running `{command}`: {e}", "lost"
            ) from e
        out, err = r.stdout or b"", r.stderr or b""
        status = r.exit_status if r.exit_status is not None else 255
        return (
            status,
            out if isinstance(out, bytes) else out.encode(),
            (err if isinstance(err, bytes) else err.encode()),
        )

    async def run(
        self,
        command: str,
        *,
        input: str | None = None,
        timeout: float | None = None,
        sudo: bool = True,
        check: bool = False,
    ) -> Result:
        """Run a shell command on the node; with check=True a non-zero exit raises SshError."""
        status, out, err = await self.run_bytes(
            command, input=input.encode() if input is not None else None, timeout=timeout, sudo=sudo
        )
        result = Result(
            self.name, command, status, out.decode(errors="replace"), err.decode(errors="replace")
        )
        if check and not result.ok:
            raise SshError(
                f"{self.name}: `{command}` failed (exit {status}): {result.output or 'no output'}"
            )
        return result

    async def read_file(self, path: str) -> bytes:
        status, out, err = await self.run_bytes("cat " + shlex.quote(path), timeout=30)
        if status != 0:
            raise SshError(f"{self.name}: cannot read {path}: {err.decode().strip()}")
        return out

    async def write_file(
        self, path: str, data: bytes, *, mode: int = 0o600, timeout: float = 30
    ) -> None:
        """Write atomically (temp file + rename), creating the folder, with the given mode."""
        p = PurePosixPath(path)
        tmp = shlex.quote(f"{p}.lab-tmp")
        command = (
            f"umask 077 && mkdir -p {shlex.quote(str(p.parent))} && cat > {tmp}"
            f" && chmod {mode:o} {tmp} && mv -f {tmp} {shlex.quote(path)}"
        )
        status, _, err = await self.run_bytes(command, input=data, timeout=timeout)
        if status != 0:
            raise SshError(f"{self.name}: cannot write {path}: {err.decode().strip()}")


def shell_for(
    cfg: LabConfig,
    node: Node,
    *,
    host_key: str | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> NodeShell:
    """The node's shell as the config says: cfg.ssh.user, cfg.ssh_key_path, and the host key
    given (a delete command carries its node's) or else the one pinned in the state folder."""
    if host_key is None:
        try:
            host_key = pinned_host_key(cfg.state_dir, node.name)
        except FileNotFoundError as e:
            raise SshError(str(e), "hostkey") from None
    return NodeShell(
        node.name,
        str(node.address),
        cfg.ssh.user,
        cfg.ssh_key_path,
        host_key,
        connect_timeout=connect_timeout,
    )
