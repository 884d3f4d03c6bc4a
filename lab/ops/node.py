"""What the operations do on the nodes over SSH: wait for a node, probe TCP paths, fetch join
credentials from a control plane (cp1 unless it is down), write the join config, run kubeadm,
read the node list through kubectl, and retry kubectl while the API server is not answering.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.ops.common import OpFailed, Session
from lab.render.kubeadm import JOIN_PATH, emulated_patches, join_configuration
from lab.ssh import SshError
from lab.topology import Node, machine_name

KUBECONFIG = "/etc/kubernetes/admin.conf"
# Seconds a TCP connect may take before the path counts as filtered, scaled by the session's
# slowdown: a loaded emulated guest took over 2 s to answer a connect to its peer port (HA run 6).
PROBE_TIMEOUT = 2
KUBECTL_RETRY_SECONDS = 5.0  # between tries of a kubectl the API server did not take

# One TCP probe per line: "<ip> <port> ok|timeout|<error>"; all probes of a node run in parallel.
_PROBE = r"""probe() {
  out=$(timeout $PROBE_TIMEOUT bash -c "echo > /dev/tcp/$1/$2" 2>&1); rc=$?
  if [ $rc = 0 ]; then echo "$1 $2 ok"; elif [ $rc = 124 ]; then echo "$1 $2 timeout";
  else echo "$1 $2 ${out##*: }"; fi
}
"""


@dataclass(frozen=True)
class TcpPath:
    """One TCP path from a node to an address:port and what a connect attempt gave."""

    source: str
    target: str  # node name (or address)
    port: int
    ok: bool
    error: str  # "" | "timeout" | "Connection refused" | "No route to host" | "ssh: ..."

    @property
    def blocked(self) -> bool:
        """Filtered or unroutable: packets vanish. 'refused' is not blocked (host answers)."""
        return (
            not self.ok and not self.error.startswith("ssh") and "refused" not in self.error.lower()
        )

    @property
    def name(self) -> str:
        return f"{self.source} -> {self.target}:{self.port}"

    def to_dict(self) -> dict[str, object]:
        return {
            "from": self.source,
            "to": self.target,
            "port": self.port,
            "ok": self.ok,
            "error": self.error or None,
        }


async def probe(
    session: Session, source: Node, targets: list[tuple[str, str, int]]
) -> list[TcpPath]:
    """TCP connect from `source` to each (name, address, port), all at once, in one SSH command."""
    if not targets:
        return []
    limit = PROBE_TIMEOUT * session.slowdown
    calls = "".join(f"probe {shlex.quote(a)} {p} &\n" for _, a, p in targets)
    try:
        r = await session.shell(source).run(
            f"PROBE_TIMEOUT={limit:g}\n" + _PROBE + calls + "wait\n",
            sudo=False,
            timeout=limit + 10 * session.slowdown,
        )
    except SshError as e:
        return [TcpPath(source.name, n, p, False, f"ssh: {e}") for n, _, p in targets]
    return parse_probes(r.stdout, source.name, targets)


def parse_probes(stdout: str, source: str, targets: list[tuple[str, str, int]]) -> list[TcpPath]:
    """The probe script's lines ("<ip> <port> ok|timeout|<error>"), one TcpPath per target."""
    seen = {}
    for line in stdout.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1].isdigit():
            seen[(parts[0], int(parts[1]))] = parts[2].strip()
    out = []
    for n, a, p in targets:
        res = seen.get((a, p), "no result")
        out.append(TcpPath(source, n, p, res == "ok", "" if res == "ok" else res))
    return out


async def wait_until_reachable(session: Session, node: Node, max_wait: float) -> None:
    """SSH answers and cloud-init (on a real VM) is done, within max_wait seconds.

    A wrong host key or a refused user key is bad input: it fails at once, not after max_wait.
    """
    deadline = time.monotonic() + max_wait
    sh = session.shell(node)
    while True:
        try:
            await sh.connect()
            break
        except SshError as e:
            if e.kind != "unreachable":
                raise OpFailed(str(e)) from None
            if time.monotonic() + 1 > deadline:
                machine = machine_name(session.cfg, node)
                raise OpFailed(
                    f"{e}; none for {max_wait:.0f}s: is its machine {machine} running and"
                    " booted? (README, Troubleshooting: a machine never answers SSH)"
                ) from None
            await asyncio.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
    left = max(5.0, deadline - time.monotonic())
    # cloud-init's last module writes boot-finished (removed as each boot begins): a file test
    # spares an emulated guest starting cloud-init's Python, seconds there, once it is done.
    r = await sh.run(
        "if [ -d /var/lib/cloud/instance ] && [ ! -e /var/lib/cloud/instance/boot-finished ]"
        " && command -v cloud-init >/dev/null; then cloud-init status --wait >/dev/null; fi",
        timeout=left,
    )
    if not r.ok and r.exit_status != 2:  # 2: cloud-init finished with recoverable errors
        raise OpFailed(f"{node.name}: cloud-init did not finish: {r.output}")


@dataclass(frozen=True)
class Credentials:
    token: str
    ca_cert_hash: str
    certificate_key: str | None


async def admin_node(session: Session, *, besides: str | None = None) -> Node:
    """Where kubectl and kubeadm's token commands run: the first control plane (other than
    `besides`) that answers SSH and holds admin.conf. That is cp1 unless cp1 is down: then the
    VIP has moved on, and every other control plane has the cluster's admin.conf too."""
    problems = []
    for node in session.topo.control_planes:
        if node.name == besides:
            continue
        try:
            r = await session.shell(node).run(
                f"test -f {KUBECONFIG}", timeout=30 * session.slowdown
            )
        except SshError as e:
            problems.append(str(e))
            continue
        if r.ok:
            return node
        problems.append(f"{node.name}: no {KUBECONFIG} (not initialised or joined yet)")
    raise OpFailed("no control plane can run kubectl: " + "; ".join(problems))


async def fetch_credentials(session: Session, admin: Node, *, control_plane: bool) -> Credentials:
    """A fresh bootstrap token, the CA hash and (control plane) a certificate key, made on the
    admin node, each in its own SSH channel at once."""
    sh = session.shell(admin)
    commands = [
        ("kubeadm token create --ttl 1h", 60),
        (
            "openssl x509 -pubkey -noout -in /etc/kubernetes/pki/ca.crt"
            " | openssl pkey -pubin -outform der | sha256sum",
            30,
        ),
    ]
    if control_plane:
        commands.append(("kubeadm init phase upload-certs --upload-certs", 120))
    runs = await asyncio.gather(
        *(sh.run(c, check=True, timeout=limit * session.slowdown) for c, limit in commands)
    )
    key = last_line(runs[2].stdout) if control_plane else None
    return Credentials(last_line(runs[0].stdout), ca_cert_hash(runs[1].stdout), key)


def last_line(text: str) -> str:
    """What `kubeadm token create` and `upload-certs` print last: the token or the key."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise OpFailed("kubeadm printed nothing where a token or key was expected")
    return lines[-1]


def ca_cert_hash(sha256sum_output: str) -> str:
    """`sha256sum` of the CA's public key ("<hex>  -") as kubeadm's discovery hash."""
    digest = (sha256sum_output.split() or [""])[0]
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise OpFailed(f"not a SHA-256 digest of the CA key: {sha256sum_output.strip()!r}")
    return "sha256:" + digest


async def write_join_config(session: Session, node: Node, creds: Credentials) -> None:
    text = join_configuration(
        session.cfg,
        node,
        token=creds.token,
        ca_cert_hash=creds.ca_cert_hash,
        certificate_key=creds.certificate_key,
        domain_type=session.domain_type,
    )
    shell = session.shell(node)
    await shell.write_file(JOIN_PATH, text.encode(), mode=0o600)
    if node.is_control_plane:
        for path, patch in emulated_patches(session.domain_type).items():
            await shell.write_file(path, patch.encode(), mode=0o644)


JOIN_PID = "/etc/kubernetes/lab/kubeadm-join.pid"
JOIN_LOG = "/etc/kubernetes/lab/kubeadm-join.log"


async def kubeadm_join(
    session: Session, node: Node, timeout: float, skip_phases: tuple[str, ...] = ()
) -> None:
    command = f"kubeadm join --config {JOIN_PATH}"
    if skip_phases:
        command += f" --skip-phases={','.join(skip_phases)}"
    # kubeadm's PID in JOIN_PID (the inner shell's, which exec makes kubeadm's), for
    # stop_kubeadm_join; its output in JOIN_LOG as it goes, for kubeadm_join_said, and here.
    inner = shlex.quote(f"echo $$ > {JOIN_PID} && exec {command}")
    r = await session.shell(node).run(
        f"sh -c {inner} > {JOIN_LOG} 2>&1; s=$?; cat {JOIN_LOG}; exit $s", timeout=timeout
    )
    if not r.ok:
        log = keep_output(session, node, command, r.output)
        session.say(node.name, f"kubeadm's whole output: {log}")
        if panicked_after_its_phases(r.output):
            session.say(node.name, "kubeadm ran every phase, then panicked on its done message")
            return
        raise OpFailed(f"{command} failed (exit {r.exit_status}): {gist(r.output)}")


# kubeadm 1.34's `join` prints its done message from the cluster's configuration, which only some
# phases fetch: a run whose other phases were all skipped (`--skip-phases`, wait-control-plane
# alone) ends with every phase done and a nil-pointer panic in the command itself, not a phase
# (HA run 16: cp3's API server healthy after 9 min, then the panic, and the voter undone).
DONE_MESSAGE_FRAME = "k8s.io/kubernetes/cmd/kubeadm/app/cmd.newCmdJoin.func1("


def panicked_after_its_phases(output: str) -> bool:
    """Whether kubeadm panicked in the join command's own code (after its phases ran), not in a
    phase: the first frame of goroutine 1's trace."""
    lines = output.splitlines()
    if "goroutine 1 [running]:" not in lines:
        return False
    at = lines.index("goroutine 1 [running]:") + 1
    return at < len(lines) and lines[at].startswith(DONE_MESSAGE_FRAME)


def keep_output(session: Session, node: Node, command: str, output: str) -> Path:
    """Append a failed command's whole output to the node's log in the state folder: the error
    alone does not say which of kubeadm's calls gave up (HA run 13), and a reset or a rebuilt
    machine leaves nothing on the node to read."""
    log = session.cfg.state_dir / "logs" / f"{node.name}-kubeadm.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {command}\n{output.rstrip()}\n")
    return log


async def kubeadm_join_runs(session: Session, node: Node) -> bool:
    """Whether the node's `kubeadm join` still runs (its PID alive); a node that does not answer
    runs none that matters."""
    try:
        r = await session.shell(node).run(
            f"kill -0 $(cat {JOIN_PID}) 2>/dev/null", timeout=30 * session.slowdown
        )
    except SshError:
        return False
    return r.ok


async def kubeadm_join_said(session: Session, node: Node, text: str) -> bool:
    """Whether the node's running (or last) `kubeadm join` has printed `text` so far."""
    r = await session.shell(node).run(
        f"grep -qF -- {shlex.quote(text)} {JOIN_LOG}", timeout=30 * session.slowdown
    )
    return r.ok


async def stop_kubeadm_join(session: Session, node: Node) -> None:
    """Stop the node's running `kubeadm join` (by its PID: test nodes share one PID space)."""
    await session.shell(node).run(
        f"kill $(cat {JOIN_PID}) 2>/dev/null; true", timeout=30 * session.slowdown
    )


# Lines that say "error" and are not kubeadm's: the etcd client's JSON retry warnings, kubeadm's
# hint on how to see a stack trace, and its preflight's note that containerd lacks a CRI method
# (in every run of kubeadm 1.36: HA run 20).
NOT_THE_ERROR = (
    '{"level":',
    "To see the stack trace",
    '"RuntimeConfig from runtime service failed"',
)


def gist(output: str, most: int = 4) -> str:
    """The error lines of a long kubeadm output (each once), else its last lines."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [
        ln
        for ln in lines
        if "error" in ln.lower() and not any(noise in ln for noise in NOT_THE_ERROR)
    ]
    return "\n    ".join((list(dict.fromkeys(errors)) or lines)[-most:]) or "no output"


async def kubeadm_reset(session: Session, node: Node) -> None:
    r = await session.shell(node).run("kubeadm reset -f", timeout=180 * session.slowdown)
    if not r.ok:
        raise OpFailed(f"{node.name}: kubeadm reset -f failed (exit {r.exit_status}): {r.output}")


async def kubectl_until_ok(session: Session, node: Node, args: str, deadline: float) -> str:
    """`kubectl ARGS` on `node` as the admin, tried again until the API server takes it or the
    deadline (time.monotonic()) passes: under emulation it may still be restarting, and a
    request through the VIP gets EOF while haproxy reloads (HA run 11). Returns its stdout."""
    command = f"kubectl --kubeconfig {KUBECONFIG} {args}"
    while True:
        try:
            r = await session.shell(node).run(command, timeout=60 * session.slowdown)
            if r.ok:
                return r.stdout
            error = r.output
        except SshError as e:
            error = str(e)
        if time.monotonic() > deadline:
            raise OpFailed(f"{node.name}: `{command}` failed: {gist(error)}")
        session.say(node.name, f"`kubectl {args}` failed ({gist(error, 1)}); trying again")
        await asyncio.sleep(KUBECTL_RETRY_SECONDS * session.slowdown)


async def kube_nodes(session: Session) -> dict[str, bool]:
    """Node name -> Ready, from `kubectl get nodes -o json` on the admin node."""
    return ready_nodes(await kube_nodes_json(session))


async def kube_nodes_json(session: Session) -> str:
    return await kube_get_json(session, "nodes")


async def kube_get_json(session: Session, what: str, admin: Node | None = None) -> str:
    """`kubectl get WHAT -o json` on `admin` (default: the admin node), as the cluster admin."""
    r = await session.shell(admin or await admin_node(session)).run(
        f"kubectl --kubeconfig {KUBECONFIG} get {what} -o json",
        timeout=60 * session.slowdown,
        check=True,
    )
    return r.stdout


def _node_items(kubectl_json: str) -> list[dict[str, Any]]:
    try:
        items: list[dict[str, Any]] = json.loads(kubectl_json).get("items", [])
    except json.JSONDecodeError as e:
        raise OpFailed(f"kubectl get nodes did not print JSON: {e}") from None
    return items


def ready_nodes(kubectl_json: str) -> dict[str, bool]:
    """Node name -> its Ready condition is True, from `kubectl get nodes -o json`."""
    out = {}
    for item in _node_items(kubectl_json):
        conds = item.get("status", {}).get("conditions", [])
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
        out[item.get("metadata", {}).get("name", "?")] = ready
    return out


def kubelet_versions(kubectl_json: str) -> dict[str, str]:
    """Node name -> the version its kubelet reports, from `kubectl get nodes -o json`."""
    return {
        item.get("metadata", {}).get("name", "?"): item.get("status", {})
        .get("nodeInfo", {})
        .get("kubeletVersion", "?")
        for item in _node_items(kubectl_json)
    }
