"""Stand-in `kubeadm`, `kubectl`, `kubelet`, `cloud-init` and `systemctl` for the integration
test nodes (kubeadm cannot run here, and no test node boots through cloud-init or systemd).

It does to etcd exactly what kubeadm 1.29+ (learner mode, stacked etcd) does, with the real etcd
3.5 binary and real etcdctl over TLS; everything else kubeadm does (kubelet, static pods,
certificates, the API server) is reduced to what the lab can observe:

- `kubeadm init [--config F] [--upload-certs]`: with a config, its InitConfiguration must name this
  node and advertise its address; preflight (/var/lib/etcd empty, no kubelet.conf), start etcd as a
  new single-member cluster named after the node, then a TLS listener on <address>:6443 for the API
  server (every request gets `200 ok`, as /healthz does), write admin.conf + kubelet.conf, register
  the Node; --upload-certs then does what `init phase upload-certs` does (below) and prints the
  certificate key, as kubeadm does.
- `kubeadm join --config F`: preflight as kubeadm join (also: /etc/kubernetes/manifests empty);
  parse the v1beta4 JoinConfiguration; check the bootstrap token (format,
  and that `kubeadm token create` made it), the CA hash against pki/ca.crt and that the API endpoint
  answers; for a control plane also the certificate key (that `upload-certs` made). Then, as
  kubeadm's etcd phase: MemberAddAsLearner through the existing members, start the local etcd with
  --initial-cluster-state=existing, MemberPromote retried every 0.5 s for a bounded time
  (`promote_timeout` in the node file; kubeadm's is EtcdAPICallTimeout). When that runs out it
  exits 1 with etcd's own error text and LEAVES the learner and its etcd running, as kubeadm does.
  With `promote_reply_lost` in the node file, the first promote goes through but is taken as
  timed out, and the retries get real etcd's answer for a voter until the time runs out (seen
  with real kubeadm under emulation). With `member_lookup_fails`, it exits 1 after starting
  the learner's etcd, with the error kubeadm gave when its member-ID lookup timed out there.
  With `takes_leadership`, its promoted member is made the leader (`etcdctl move-leader`) and
  the join goes on for 20 s more, as a starting control plane whose member an election chose.
  With `remaining_phases_fail: N`, the first N joins run with etcd-join skipped exit 1 with the
  error real kubeadm gave there: an API timeout before any phase ran, or
  (`remaining_phases_fail_in: wait-control-plane`) the node's API server not live in the last
  phase, the others done (HA run 13's text), or (`tls-bootstrap`) kubeadm's wait for the
  kubelet's TLS bootstrap running out (HA runs 8 and 19's text). kubelet-start writes the
  bootstrap kubeconfig, and kubelet-wait-bootstrap passes only with it there, deleting it
  whatever the outcome, as kubeadm does; a wait that ran out leaves the kubelet.conf the real
  kubelet writes as it starts, naming a client certificate it never got (HA run 26; here under
  /etc/kubernetes/pki, the node's own, where the real one is /var/lib/kubelet/pki): a run after
  the wait ran out passes only with kubelet-start not skipped.
  With `whole_joins_fail: N`, the first N joins that run etcd-join fail in wait-control-plane as
  well, every phase before it done (HA run 20's cp3).
  A control-plane join whose only phase not skipped is wait-control-plane ends as kubeadm 1.34's
  does: every phase done, then a nil-pointer panic on its done message, exit 2.
  The etcd "manifest" is /etc/kubernetes/manifests/etcd.yaml (JSON: the etcd argv).
  `--skip-phases` skips preflight, control-plane-prepare
  (the certificate key) and etcd-join; a name that is not a phase of the node's release
  (`control-plane-join/etcd` from 1.36 on) fails as kubeadm does: "invalid phase name".
  A worker (no controlPlane section) only registers the Node; with `join_held` in the node
  file it first waits until that is false again (a slow node, held by the test).
- `kubeadm reset -f`: remove this node's etcd member through the cluster if it can (a warning if
  not; with `reset_keeps_member` it does not try, as real kubeadm whose API calls timed out
  under emulation), stop etcd and the listener (the Node object stays, as with kubeadm),
  delete /var/lib/etcd/*, /etc/kubernetes/manifests/* and the kubeconfig files. Deviation:
  /etc/kubernetes/pki is kept, because the harness provisions it (real kubeadm downloads it
  with the certificate key).
- `kubeadm version -o short`, `kubelet --version`: the node's `version` (the config's
  kubernetes.version, as on a node of that image), and the API server's "manifest"
  (/etc/kubernetes/manifests/kube-apiserver.yaml) names its image at that version: what `lab
  upgrade` reads to find a node already at the version (a no-op). The upgrade itself
  (`kubeadm upgrade`, drain, the kubelet's restart) is not stood in for: the e2e tiers run it.
- `kubeadm token create`, `kubeadm init phase upload-certs --upload-certs`: print a token / a
  certificate key and store them (in etcd, under /registry/secrets/ as the API server would).
  With `token_create_fails_at: N`, this node's Nth `token create` times out as HA run 26's did.
- `kubectl get pods -A -o json`: an empty list (no pod runs on a test node).
- `systemctl is-active|stop|start|restart kubelet`: no kubelet runs; stopping the unit marks the
  Node NotReady (Ready Unknown, "Kubelet stopped posting node status."), starting it starts the
  static pods that do not run (etcd, the API server) and marks the Node Ready.
- `kubectl [--kubeconfig F] get nodes [NAME] [-o json]`, `kubectl delete node NAME
  [--ignore-not-found]`: the registered Nodes (stored in etcd under /registry/minions/ as the API
  server does); Ready until the node is reset. With `node_delete_fails: N`, the first N deletes
  on this node get the EOF real kubectl got through the VIP while haproxy reloaded.
- `cloud-init status [--wait]`: a test node is created fully provisioned (what its user-data
  would write, e.g. cp1's init.yaml, the harness writes before anything connects), so this answers
  what cloud-init answers on a VM whose first boot has finished: `status: done`, exit 0. (This
  host's real cloud-init, if any, says "not run" there, and `--wait` would wait for ever.)
- `systemctl enable --now|start|restart|reload|stop|is-active|is-enabled keepalived|haproxy`:
  runs this host's real keepalived and haproxy in the node (its netns, and its /etc/keepalived
  and /etc/haproxy), as Debian's units do: real VRRP between the nodes on the bridge, real
  haproxy health checks. Every unit is enabled, as in the node image.

The node's identity (name, address, binaries, CP addresses, timeouts) comes from a JSON file the
harness writes; the wrapper scripts on the node's PATH pass it with --node-config.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

KUBE = Path("/etc/kubernetes")
PKI = KUBE / "pki"
MANIFESTS = KUBE / "manifests"
APISERVER_MANIFEST = MANIFESTS / "kube-apiserver.yaml"
ETCD_DATA = Path("/var/lib/etcd")
BOOTSTRAP_KUBECONFIG = KUBE / "bootstrap-kubelet.conf"  # kubelet-start's, for the TLS bootstrap
KUBELET_CLIENT_CERT = PKI / "kubelet-client-current.pem"  # never written: no kubelet runs here
KUBECONFIGS = (
    "admin.conf",
    "super-admin.conf",
    "kubelet.conf",
    "controller-manager.conf",
    "scheduler.conf",
    "bootstrap-kubelet.conf",
)
TOKEN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
CERT_KEY = re.compile(r"^[a-f0-9]{64}$")
API = "kubeadm.k8s.io/v1beta4"


class Fail(Exception):
    """kubeadm's 'error execution phase ...': printed on stderr, exit 1."""


@dataclass(frozen=True)
class NodeConf:
    name: str
    address: str
    etcd: str
    etcdctl: str
    python: str
    control_planes: dict[str, str]
    run_dir: Path
    promote_timeout: float
    promote_reply_lost: bool = False
    member_lookup_fails: bool = False
    remaining_phases_fail: int = 0  # how many runs of the phases after etcd-join fail
    # where those runs fail: this phase, "wait-control-plane" or "tls-bootstrap"
    remaining_phases_fail_in: str = "kubelet-wait-bootstrap"
    whole_joins_fail: int = 0  # how many joins that run etcd-join fail in wait-control-plane
    reset_keeps_member: bool = False
    takes_leadership: bool = False  # its member is made the leader after its promote
    node_delete_fails: int = 0  # how many `kubectl delete node` on this node fail with EOF
    token_create_fails_at: int = 0  # which `kubeadm token create` here (1, 2, ...) times out
    join_held: bool = False  # a worker's join waits while this is true
    version: str = "0.0.0"  # the Kubernetes version its "binaries" report (the config's)

    @classmethod
    def load(cls, path: Path) -> NodeConf:
        raw = json.loads(path.read_text())
        raw["run_dir"] = Path(raw["run_dir"])
        return cls(**raw)

    @property
    def peer_url(self) -> str:
        return f"https://{self.address}:2380"

    @property
    def client_url(self) -> str:
        return f"https://{self.address}:2379"

    def cluster_endpoints(self) -> list[str]:
        return [f"https://{a}:2379" for a in self.control_planes.values()]


def say(msg: str) -> None:
    print(msg, flush=True)


# ---- etcdctl -------------------------------------------------------------------------------------


def etcdctl(node: NodeConf, endpoints: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    argv = [
        node.etcdctl,
        f"--endpoints={','.join(endpoints)}",
        f"--cacert={PKI / 'etcd/ca.crt'}",
        f"--cert={PKI / 'apiserver-etcd-client.crt'}",
        f"--key={PKI / 'apiserver-etcd-client.key'}",
        "--dial-timeout=2s",
        "--command-timeout=3s",
        *args,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)


def etcd_error(proc: subprocess.CompletedProcess[str]) -> str:
    """etcd's own error text, as the gRPC status kubeadm prints ('rpc error: ... desc = ...')."""
    rpc = re.findall(r'"error":"(rpc error: [^"]*)"', proc.stderr)
    if rpc:
        return str(rpc[-1])
    lines = [
        ln.removeprefix("Error: ") for ln in proc.stderr.splitlines() if ln.startswith("Error:")
    ]
    return lines[-1] if lines else (proc.stderr.strip() or f"etcdctl exited {proc.returncode}")


def members(node: NodeConf, endpoints: list[str]) -> list[dict[str, Any]]:
    proc = etcdctl(node, endpoints, "member", "list", "-w", "json")
    if proc.returncode != 0:
        raise Fail(f"etcd member list via {','.join(endpoints)}: {etcd_error(proc)}")
    found: list[dict[str, Any]] = json.loads(proc.stdout).get("members", [])
    return found


def put(node: NodeConf, endpoints: list[str], key: str, value: str) -> None:
    proc = etcdctl(node, endpoints, "put", key, value)
    if proc.returncode != 0:
        raise Fail(f"writing {key}: {etcd_error(proc)}")


def get(node: NodeConf, endpoints: list[str], key: str) -> str | None:
    proc = etcdctl(node, endpoints, "get", key, "-w", "json")
    if proc.returncode != 0:
        raise Fail(f"reading {key}: {etcd_error(proc)}")
    kvs = json.loads(proc.stdout).get("kvs", [])
    return base64.b64decode(kvs[0]["value"]).decode() if kvs else None


# ---- processes (the kubelet's static pods, reduced to detached processes) ------------------------


def pid_file(node: NodeConf, what: str) -> Path:
    return node.run_dir / f"{what}.pid"


def running(node: NodeConf, what: str) -> int | None:
    try:
        pid = int(pid_file(node, what).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    return pid if cmdline and state != "Z" else None


def spawn(node: NodeConf, what: str, argv: list[str]) -> None:
    node.run_dir.mkdir(parents=True, exist_ok=True)
    with open(node.run_dir / f"{what}.log", "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    pid_file(node, what).write_text(str(proc.pid))


def stop(node: NodeConf, what: str) -> None:
    pid = running(node, what)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while running(node, what) and time.monotonic() < deadline:
        time.sleep(0.1)
    if running(node, what):
        os.kill(pid, signal.SIGKILL)
    pid_file(node, what).unlink(missing_ok=True)


def etcd_argv(node: NodeConf, initial_cluster: str, state: str) -> list[str]:
    """The flags kubeadm puts into the etcd static pod manifest."""
    etcd_pki = PKI / "etcd"
    return [
        node.etcd,
        f"--name={node.name}",
        f"--data-dir={ETCD_DATA}",
        f"--listen-client-urls=https://127.0.0.1:2379,{node.client_url}",
        f"--advertise-client-urls={node.client_url}",
        f"--listen-peer-urls={node.peer_url}",
        f"--initial-advertise-peer-urls={node.peer_url}",
        f"--initial-cluster={initial_cluster}",
        f"--initial-cluster-state={state}",
        f"--cert-file={etcd_pki / 'server.crt'}",
        f"--key-file={etcd_pki / 'server.key'}",
        "--client-cert-auth=true",
        f"--trusted-ca-file={etcd_pki / 'ca.crt'}",
        f"--peer-cert-file={etcd_pki / 'peer.crt'}",
        f"--peer-key-file={etcd_pki / 'peer.key'}",
        "--peer-client-cert-auth=true",
        f"--peer-trusted-ca-file={etcd_pki / 'ca.crt'}",
        "--snapshot-count=10000",
        "--listen-metrics-urls=http://127.0.0.1:2381",
    ]


def start_etcd(node: NodeConf, initial_cluster: str, state: str) -> None:
    MANIFESTS.mkdir(parents=True, exist_ok=True)
    ETCD_DATA.chmod(0o700)
    argv = etcd_argv(node, initial_cluster, state)
    (MANIFESTS / "etcd.yaml").write_text(json.dumps(argv))
    say(f"[etcd] starting etcd ({state} cluster: {initial_cluster})")
    spawn(node, "etcd", argv)


def start_static_pods(node: NodeConf) -> None:
    """(Re)start what the kubelet would run from /etc/kubernetes/manifests: etcd, the API server."""
    manifest = MANIFESTS / "etcd.yaml"
    if manifest.is_file() and not running(node, "etcd"):
        spawn(node, "etcd", json.loads(manifest.read_text()))
    if APISERVER_MANIFEST.is_file() and not running(node, "apiserver"):
        spawn(
            node,
            "apiserver",
            [node.python, __file__, "--node-config", str(node_config_path()), "apiserver"],
        )


def start_apiserver(node: NodeConf) -> None:
    MANIFESTS.mkdir(parents=True, exist_ok=True)
    # What `lab upgrade` reads of a control plane: its API server's image (kubeadm's tag).
    image = f"registry.k8s.io/kube-apiserver:v{node.version}"
    APISERVER_MANIFEST.write_text(f"# stand-in: a TLS listener on :6443\nimage: {image}\n")
    start_static_pods(node)
    wait_for(lambda: tcp_open(node.address, 6443), 10, "the API server listener on :6443")


def tcp_open(host: str, port: int, timeout: float = 2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(check: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise Fail(f"timed out after {seconds:.0f}s waiting for {what}")
        time.sleep(0.3)


def etcd_healthy(node: NodeConf) -> bool:
    return etcdctl(node, [node.client_url], "endpoint", "health").returncode == 0


def serve_apiserver(node: NodeConf) -> int:
    """The API server's stand-in: TLS on <address>:6443 (the node's serving certificate), and
    `200 ok` to any request, as a healthy API server answers /healthz (haproxy's check). A
    client that only connects (a TCP probe) fails the handshake, which is ignored."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(PKI / "etcd" / "server.crt", PKI / "etcd" / "server.key")
    srv = socket.create_server((node.address, 6443), reuse_port=True)
    while True:
        conn, _ = srv.accept()
        conn.settimeout(5)
        try:
            with tls.wrap_socket(conn, server_side=True) as t:
                t.recv(4096)
                t.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        except OSError:
            conn.close()


# ---- systemctl: keepalived and haproxy, the control-plane endpoint ------------------------------


def service_argv(node: NodeConf, service: str) -> list[str]:
    """Debian's units run these (keepalived.service, haproxy.service), in the foreground; the
    pid files are the node's own, as every node's keepalived shares this host's /run."""
    if service == "keepalived":
        pids = [f"--{k}={node.run_dir / f'keepalived-{k}.pid'}" for k in ("pid", "vrrp_pid")]
        return ["keepalived", "--dont-fork", "--log-console", "--vrrp", *pids]
    if service == "haproxy":
        return ["haproxy", "-db", "-f", "/etc/haproxy/haproxy.cfg"]
    raise Fail(f"Unit {service}.service not found.")


def systemctl(node: NodeConf, argv: list[str]) -> int:
    """`systemctl enable --now|start|restart|reload|stop|is-active|is-enabled UNIT...` for the
    services the lab starts; enable is a no-op and every unit is enabled (a test node never
    boots), and reload restarts."""
    now = "--now" in argv
    verb, *units = [a for a in argv if not a.startswith("-")]
    status = 0
    for unit in units:
        service = unit.removesuffix(".service")
        if service == "kubelet":
            status = status or kubelet_unit(node, verb)
            continue
        argv_of = service_argv(node, service)
        if verb == "is-active":
            active = running(node, service) is not None
            print("active" if active else "inactive")
            status = status or (0 if active else 3)
        elif verb == "is-enabled":
            if "--quiet" not in argv:
                print("enabled")
        elif verb in ("stop", "restart", "reload"):
            stop(node, service)
        starts = verb in ("start", "restart", "reload") or (verb == "enable" and now)
        if starts and running(node, service) is None:
            spawn(node, service, argv_of)
    return status


# ---- kubeadm -------------------------------------------------------------------------------------


def kubeconfig(server: str, user: str, client_cert: str = "") -> str:
    auth = {"client-certificate": client_cert} if client_cert else {}
    return str(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "kubernetes",
                        "cluster": {"server": server, "certificate-authority": str(PKI / "ca.crt")},
                    }
                ],
                "contexts": [
                    {
                        "name": f"{user}@kubernetes",
                        "context": {"cluster": "kubernetes", "user": user},
                    }
                ],
                "current-context": f"{user}@kubernetes",
                "users": [{"name": user, "user": auth}],
            }
        )
    )


def register(node: NodeConf, endpoints: list[str], role: str) -> None:
    labels = {"kubernetes.io/hostname": node.name}
    if role == "control-plane":
        labels["node-role.kubernetes.io/control-plane"] = ""
    obj = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": labels},
        "status": {
            "addresses": [{"type": "InternalIP", "address": node.address}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            "nodeInfo": {"kubeletVersion": f"v{node.version}"},
        },
    }
    put(node, endpoints, f"/registry/minions/{node.name}", json.dumps(obj))
    say(f"[kubelet-start] node {node.name} registered")


def mark_not_ready(node: NodeConf, endpoints: list[str], status: str = "False") -> None:
    """The kubelet stops posting status: the node controller marks the Node NotReady (best effort;
    the Node object itself stays until `kubectl delete node`)."""
    reason = {"type": "Ready", "status": status, "reason": "NodeStatusUnknown"}
    set_ready(node, endpoints, reason | {"message": "Kubelet stopped posting node status."})


def set_ready(node: NodeConf, endpoints: list[str], condition: dict[str, str]) -> None:
    try:
        raw = get(node, endpoints, f"/registry/minions/{node.name}")
        if raw:
            obj = json.loads(raw)
            obj["status"]["conditions"] = [condition]
            put(node, endpoints, f"/registry/minions/{node.name}", json.dumps(obj))
    except (Fail, subprocess.TimeoutExpired) as e:
        print(f"could not update Node {node.name}: {e}", file=sys.stderr)


def kubelet_unit(node: NodeConf, verb: str) -> int:
    """`systemctl is-active|stop|start|restart kubelet`: no kubelet runs here, so the unit is a
    state file; stopping it marks the Node NotReady as the node controller does once the
    kubelet's status stops coming (at once here), starting it marks it Ready again."""
    stopped = node.run_dir / "kubelet.stopped"
    if verb == "is-active":
        print("inactive" if stopped.exists() else "active")
        return 3 if stopped.exists() else 0
    if verb == "stop":
        stopped.touch()
        mark_not_ready(node, node.cluster_endpoints(), "Unknown")
    elif verb in ("start", "restart"):
        stopped.unlink(missing_ok=True)
        start_static_pods(node)  # what a starting kubelet does with the manifests
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady"}
        set_ready(node, node.cluster_endpoints(), ready)
    return 0


def preflight(joining: bool = False) -> None:
    errors = []
    if joining and MANIFESTS.is_dir() and any(MANIFESTS.iterdir()):
        # kubeadm join (not init, which checks its own manifest files only) wants an empty folder.
        errors.append(f"[ERROR DirAvailable--etc-kubernetes-manifests]: {MANIFESTS} is not empty")
    if ETCD_DATA.is_dir() and any(ETCD_DATA.iterdir()):
        errors.append(f"[ERROR DirAvailable--var-lib-etcd]: {ETCD_DATA} is not empty")
    if (KUBE / "kubelet.conf").exists():
        errors.append(
            f"[ERROR FileAvailable--etc-kubernetes-kubelet.conf]: "
            f"{KUBE / 'kubelet.conf'} already exists"
        )
    if errors:
        raise Fail("[preflight] Some fatal errors occurred:\n\t" + "\n\t".join(errors))


def cmd_init(node: NodeConf, args: argparse.Namespace) -> int:
    if args.config:
        try:
            docs = [d for d in yaml.safe_load_all(Path(args.config).read_text()) if d]
        except (OSError, yaml.YAMLError) as e:
            raise Fail(f"unable to read config from {args.config!r}: {e}") from None
        init: dict[str, Any] = next((d for d in docs if d.get("kind") == "InitConfiguration"), {})
        if init and init.get("apiVersion") != API:
            raise Fail(f"InitConfiguration apiVersion {init.get('apiVersion')!r}: want {API}")
        name = init.get("nodeRegistration", {}).get("name", node.name)
        if name != node.name:
            raise Fail(f"nodeRegistration.name {name!r} is not this node ({node.name})")
        advertise = init.get("localAPIEndpoint", {}).get("advertiseAddress", node.address)
        if advertise != node.address:
            raise Fail(f"advertiseAddress {advertise} is not this node's address {node.address}")
    preflight()
    ETCD_DATA.mkdir(exist_ok=True)
    start_etcd(node, f"{node.name}={node.peer_url}", "new")
    wait_for(lambda: etcd_healthy(node), 30, "etcd to be healthy")
    start_apiserver(node)
    server = f"https://{node.address}:6443"
    (KUBE / "admin.conf").write_text(kubeconfig(server, "kubernetes-admin"))
    (KUBE / "kubelet.conf").write_text(kubeconfig(server, f"system:node:{node.name}"))
    register(node, [node.client_url], "control-plane")
    if args.upload_certs:
        upload_certs(node, None)
    say("Your Kubernetes control-plane has initialized successfully!")
    return 0


def ca_hash() -> str:
    out = subprocess.run(
        ["openssl", "x509", "-pubkey", "-noout", "-in", str(PKI / "ca.crt")],
        capture_output=True,
        check=True,
    ).stdout
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"], input=out, capture_output=True, check=True
    ).stdout
    return "sha256:" + hashlib.sha256(der).hexdigest()


def load_join(path: str) -> dict[str, Any]:
    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    except (OSError, yaml.YAMLError) as e:
        raise Fail(f"unable to read config from {path!r}: {e}") from None
    for d in docs:
        if d.get("kind") == "JoinConfiguration":
            if d.get("apiVersion") != API:
                raise Fail(f"JoinConfiguration apiVersion {d.get('apiVersion')!r}: want {API}")
            return dict(d)
    raise Fail(f"no JoinConfiguration in {path}")


def discovery(node: NodeConf, join: dict[str, Any]) -> tuple[str, list[str]]:
    """Bootstrap-token discovery: returns the API endpoint (host:port) and the cluster's etcd
    endpoints."""
    bt = join.get("discovery", {}).get("bootstrapToken", {})
    token, endpoint = str(bt.get("token", "")), str(bt.get("apiServerEndpoint", ""))
    if not TOKEN.match(token):
        raise Fail(f'the bootstrap token "{token}" was not of the form "{TOKEN.pattern}"')
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise Fail(f"discovery.bootstrapToken.apiServerEndpoint {endpoint!r} is not host:port")
    try:
        wait_for(lambda: tcp_open(host, int(port)), 10, f"the API server at {endpoint}")
    except Fail as e:
        raise Fail(f"couldn't validate the identity of the API Server: {e}") from None
    # The API server behind the endpoint reads the cluster's etcd: that of the control plane the
    # endpoint names, or (a VIP) any control plane's.
    cps = node.control_planes.values()
    endpoints = [f"https://{host}:2379"] if host in cps else node.cluster_endpoints()
    if get(node, endpoints, f"/registry/secrets/kube-system/bootstrap-token-{token[:6]}") != token:
        raise Fail(
            f'couldn\'t validate the identity of the API Server: token id "{token[:6]}" is'
            " invalid for this cluster or it has expired"
        )
    want = ca_hash()
    if want not in bt.get("caCertHashes", []):
        raise Fail(
            f"cluster CA found in cluster-info ConfigMap is not pinned: none of the public"
            f" keys {bt.get('caCertHashes')} match {want}"
        )
    return endpoint, endpoints


def cmd_join(node: NodeConf, args: argparse.Namespace) -> int:
    join = load_join(args.config)
    name = join.get("nodeRegistration", {}).get("name", node.name)
    if name != node.name:
        raise Fail(f"nodeRegistration.name {name!r} is not this node ({node.name})")
    skip = set(args.skip_phases.split(",")) if args.skip_phases else set()
    phases = phases_of(node.version)
    if unknown := sorted(skip - phases):
        raise Fail(f"invalid phase name: {unknown[0]}")
    if "preflight" not in skip:
        preflight(joining=True)
    api, endpoints = discovery(node, join)
    cp = join.get("controlPlane")
    if cp is None:
        while NodeConf.load(node_config_path()).join_held:
            time.sleep(0.2)
        (KUBE / "kubelet.conf").write_text(kubeconfig(f"https://{api}", f"system:node:{node.name}"))
        register(node, endpoints, "worker")
        say("This node has joined the cluster.")
        return 0
    if "control-plane-prepare" not in skip:
        download_certs(node, endpoints, cp)
    failing = (
        "etcd-join" in skip and counted_run(node, "remaining-phases") <= node.remaining_phases_fail
    )
    whole_join_fails = (
        "etcd-join" not in skip and counted_run(node, "whole-joins") <= node.whole_joins_fail
    )
    server = f"https://{api}"
    if "kubelet-start" not in skip:
        BOOTSTRAP_KUBECONFIG.write_text(kubeconfig(server, "system:bootstrappers"))
    if "etcd-join" not in skip:
        join_etcd(node, endpoints)
    elif failing and node.remaining_phases_fail_in == "kubelet-wait-bootstrap":
        # Real kubeadm under emulation: its first API request after etcd-join passed its 10 s.
        raise Fail(
            "error execution run condition for phase kubelet-wait-bootstrap: unable to fetch the"
            ' kubeadm-config ConfigMap: failed to get config map: Get "https://10.41.0.10:8443/'
            'api/v1/namespaces/kube-system/configmaps/kubeadm-config?timeout=10s": net/http:'
            " request canceled (Client.Timeout exceeded while awaiting headers)"
        )
    start_apiserver(node)
    (KUBE / "admin.conf").write_text(kubeconfig(server, "kubernetes-admin"))
    if "kubelet-wait-bootstrap" not in skip:
        wait_for_tls_bootstrap(
            kubeconfig(server, f"system:node:{node.name}", client_cert=str(KUBELET_CLIENT_CERT)),
            runs_out=failing and node.remaining_phases_fail_in == "tls-bootstrap",
        )
    (KUBE / "kubelet.conf").write_text(kubeconfig(server, f"system:node:{node.name}"))
    register(node, endpoints, "control-plane")
    if whole_join_fails or (failing and node.remaining_phases_fail_in == "wait-control-plane"):
        # HA run 13: the node's own API server answered /livez, its etcd check failing, for
        # kubeadm's 20 min (no "?timeout=" in it: not an API request past 10 s).
        raise Fail(
            "error execution phase wait-control-plane: failed while waiting for the control"
            " plane to start: kube-apiserver check failed at https://10.41.0.13:6443/livez: an"
            ' error on the server ("[+]ping ok\\n[-]etcd failed: reason withheld\\nlivez check'
            ' failed") has prevented the request from succeeding'
        )
    if READS_CONFIG.isdisjoint(phases - skip):
        # Real kubeadm 1.34: its done message reads the cluster's configuration, which only these
        # phases fetch (HA run 16).
        print(DONE_MESSAGE_PANIC, file=sys.stderr, flush=True)
        return 2
    say("This node has joined the cluster and a new control plane instance was created.")
    return 0


def wait_for_tls_bootstrap(kubelet_conf: str, runs_out: bool) -> None:
    """kubelet-wait-bootstrap: the kubelet bootstraps from what kubelet-start wrote (or has a
    kubelet.conf whose client certificate is there), and kubeadm deletes that as the wait ends,
    whatever its outcome. A wait that ran out leaves `kubelet_conf`, the kubelet's own."""
    conf = KUBE / "kubelet.conf"
    has_cert = conf.exists() and all(
        Path(u["user"]["client-certificate"]).exists()
        for u in yaml.safe_load(conf.read_text())["users"]
        if "client-certificate" in u["user"]
    )
    bootstrapped = (BOOTSTRAP_KUBECONFIG.exists() or has_cert) and not runs_out
    BOOTSTRAP_KUBECONFIG.unlink(missing_ok=True)
    if not bootstrapped:
        conf.write_text(kubelet_conf)
        raise Fail(
            "error execution phase kubelet-wait-bootstrap: failed while waiting for TLS"
            " bootstrap: context deadline exceeded"
        )


# kubeadm join's phases, and those of them that fetch the cluster's configuration.
PHASES = {
    "preflight",
    "control-plane-prepare",
    "check-etcd",
    "kubelet-start",
    "etcd-join",
    "kubelet-wait-bootstrap",
    "control-plane-join/etcd",
    "control-plane-join/mark-control-plane",
    "wait-control-plane",
}
READS_CONFIG = PHASES - {"wait-control-plane"}


def phases_of(version: str) -> set[str]:
    """kubeadm 1.36 removed control-plane-join/etcd (cmd/kubeadm/app/cmd/phases/join)."""
    major, minor = (int(x) for x in version.split(".")[:2])
    return PHASES - {"control-plane-join/etcd"} if (major, minor) >= (1, 36) else PHASES


DONE_MESSAGE_PANIC = """\
panic: runtime error: invalid memory address or nil pointer dereference
[signal SIGSEGV: segmentation violation code=0x1 addr=0x50 pc=0x236516a]

goroutine 1 [running]:
k8s.io/kubernetes/cmd/kubeadm/app/cmd.newCmdJoin.func1(0x19bf4838800?, {0x19bf4171800, 0x0, 0x3})
\tk8s.io/kubernetes@v1.34.4/cmd/kubeadm/app/cmd/join.go:195 +0xaa"""


def counted_run(node: NodeConf, what: str) -> int:
    """This run's number (1, 2, ...) among the runs of `what` on this node, for the faults that
    hit the first N."""
    counter = node.run_dir / f"{what}-runs"
    runs = int(counter.read_text()) + 1 if counter.is_file() else 1
    counter.write_text(str(runs))
    return runs


def download_certs(node: NodeConf, endpoints: list[str], cp: dict[str, Any]) -> None:
    """kubeadm's control-plane-prepare: the certificate key opens the uploaded certificates."""
    key = str(cp.get("certificateKey", ""))
    if not CERT_KEY.match(key):
        raise Fail("control-plane join needs a certificateKey of 64 hex characters")
    if get(node, endpoints, "/registry/secrets/kube-system/kubeadm-certs") != key:
        raise Fail(
            "error downloading certs: the certificate key does not match the uploaded"
            " certificates (expired or from another cluster)"
        )
    advertise = cp.get("localAPIEndpoint", {}).get("advertiseAddress", node.address)
    if advertise != node.address:
        raise Fail(f"advertiseAddress {advertise} is not this node's address {node.address}")


def join_etcd(node: NodeConf, endpoints: list[str]) -> None:
    """kubeadm's control-plane-join/etcd phase in learner mode."""
    current = members(node, endpoints)
    voters = [m["clientURLs"][0] for m in current if m.get("name") and not m.get("isLearner")]
    endpoints = voters or endpoints
    say(f"[etcd] Adding etcd member {node.name} ({node.peer_url}) as learner")
    deadline = time.monotonic() + 5
    while True:
        proc = etcdctl(
            node,
            endpoints,
            "member",
            "add",
            node.name,
            f"--peer-urls={node.peer_url}",
            "--learner",
            "-w",
            "json",
        )
        if proc.returncode == 0:
            break
        if time.monotonic() > deadline:
            raise Fail(
                "error execution phase control-plane-join/etcd: error adding etcd member"
                f" as learner: {etcd_error(proc)}"
            )
        time.sleep(0.5)
    added = json.loads(proc.stdout)
    learner_id = f"{added['member']['ID']:x}"
    cluster = [f"{m['name']}={m['peerURLs'][0]}" for m in added["members"] if m.get("name")]
    cluster.append(f"{node.name}={node.peer_url}")
    ETCD_DATA.mkdir(exist_ok=True)
    start_etcd(node, ",".join(cluster), "existing")
    if node.member_lookup_fails:
        # kubeadm looks its learner's ID up in a member list with a fixed 2 s limit and gives up
        # on the first timeout (seen under emulation): the learner stays, its etcd runs.
        raise Fail(
            "error execution phase etcd-join: error creating local etcd static pod manifest"
            " file: context deadline exceeded"
        )
    say(f"[etcd] Promoting the learner {learner_id} (up to {node.promote_timeout:.0f}s)")
    deadline = time.monotonic() + node.promote_timeout
    while True:
        proc = etcdctl(node, endpoints, "member", "promote", learner_id)
        if proc.returncode == 0:
            break
        say(f"[etcd] Promoting the learner {learner_id} failed: {etcd_error(proc)}")
        if time.monotonic() > deadline:
            raise Fail(
                "error execution phase control-plane-join/etcd: error creating local etcd"
                f" static pod manifest file: {etcd_error(proc)}"
            )
        time.sleep(0.5)
    if node.promote_reply_lost:
        # kubeadm's 2 s promote call timed out although etcd promoted the member (seen under
        # emulation): it retries, and real etcd refuses each, as the member is a voter now.
        say(f"[etcd] Promoting the learner {learner_id} failed: context deadline exceeded")
        while time.monotonic() < deadline:
            time.sleep(0.5)
            proc = etcdctl(node, endpoints, "member", "promote", learner_id)
            say(f"[etcd] Promoting the learner {learner_id} failed: {etcd_error(proc)}")
        raise Fail(
            "error execution phase etcd-join: error creating local etcd static pod manifest"
            f" file: {etcd_error(proc)}"
        )
    say("[etcd] Waiting for the new etcd member to join the cluster. This can take up to 40s")
    if node.takes_leadership:
        # HA run 13: the joining node's new voter was elected leader while its control plane
        # was still starting; here the leadership is handed to it, and kubeadm goes on for a
        # while (its static pods starting) before it ends.
        proc = etcdctl(node, node.cluster_endpoints(), "move-leader", learner_id)
        if proc.returncode != 0:
            raise Fail(f"move-leader: {etcd_error(proc)}")
        time.sleep(20)
    wait_for(lambda: etcd_healthy(node), 30, "the local etcd member to be healthy")


def cmd_reset(node: NodeConf, args: argparse.Namespace) -> int:
    if not args.force:
        raise Fail("reset without -f would ask for confirmation; the lab always passes -f")
    say("[reset] Removing this node's etcd member (if any)")
    others = [e for e in node.cluster_endpoints() if e != node.client_url] or [node.client_url]
    # kubeadm retries the removal with backoff (etcd refuses it for a few seconds after a member
    # became active: "unhealthy cluster"), then warns and goes on.
    deadline = time.monotonic() + 12
    while not node.reset_keeps_member:
        try:
            mine = [
                m
                for m in members(node, others)
                if m.get("name") == node.name or node.peer_url in m.get("peerURLs", [])
            ]
            for m in mine:
                proc = etcdctl(node, others, "member", "remove", f"{m['ID']:x}")
                if proc.returncode != 0:
                    raise Fail(etcd_error(proc))
                say(f"[reset] Removed etcd member {m['ID']:x}")
            break
        except (Fail, subprocess.TimeoutExpired) as e:
            if time.monotonic() > deadline:
                print(
                    f"[reset] Failed to remove etcd member: {e}; please manually remove this"
                    " etcd member using etcdctl",
                    file=sys.stderr,
                )
                break
            time.sleep(1)
    mark_not_ready(node, others)
    say("[reset] Stopping the kubelet and its static pods")
    stop(node, "apiserver")
    stop(node, "etcd")
    for d in (ETCD_DATA, MANIFESTS):
        if d.is_dir():
            for child in d.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    for f in KUBECONFIGS:
        (KUBE / f).unlink(missing_ok=True)
    say(f"[reset] Deleted contents of {ETCD_DATA}, {MANIFESTS} and the kubeconfig files")
    return 0


def admin_endpoints(node: NodeConf) -> list[str]:
    """The API server of this control plane talks to its local etcd member."""
    if not (KUBE / "admin.conf").is_file():
        raise Fail(
            f"failed to load admin kubeconfig: open {KUBE / 'admin.conf'}: no such file or"
            " directory"
        )
    return [node.client_url]


def cmd_token(node: NodeConf, args: argparse.Namespace) -> int:
    if args.action != "create":
        raise Fail(f"the stand-in supports `token create` only, not {args.action!r}")
    if counted_run(node, "token-creates") == node.token_create_fails_at:
        raise Fail(
            "failed to create or update bootstrap token with name bootstrap-token-reut60: unable"
            ' to update *v1.Secret: Put "https://10.41.0.10:8443/api/v1/namespaces/kube-system/'
            'secrets/bootstrap-token-reut60?timeout=10s": net/http: request canceled'
            " (Client.Timeout exceeded while awaiting headers)"
        )
    endpoints = admin_endpoints(node)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    token = (
        "".join(secrets.choice(alphabet) for _ in range(6))
        + "."
        + "".join(secrets.choice(alphabet) for _ in range(16))
    )
    put(node, endpoints, f"/registry/secrets/kube-system/bootstrap-token-{token[:6]}", token)
    print(token)
    return 0


def cmd_upload_certs(node: NodeConf, args: argparse.Namespace) -> int:
    upload_certs(node, args.certificate_key)
    return 0


def upload_certs(node: NodeConf, certificate_key: str | None) -> None:
    endpoints = admin_endpoints(node)
    key = certificate_key or secrets.token_hex(32)
    put(node, endpoints, "/registry/secrets/kube-system/kubeadm-certs", key)
    say(
        '[upload-certs] Storing the certificates in Secret "kubeadm-certs" in the "kube-system"'
        " Namespace"
    )
    say("[upload-certs] Using certificate key:")
    say(key)


# ---- kubectl -------------------------------------------------------------------------------------


def kubectl(node: NodeConf, argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="kubectl")
    p.add_argument(
        "--kubeconfig", default=os.environ.get("KUBECONFIG", str(Path.home() / ".kube/config"))
    )
    p.add_argument("verb", choices=["get", "delete"])
    p.add_argument("resource", choices=["nodes", "node", "no", "pods"])
    p.add_argument("name", nargs="?")
    p.add_argument("-o", "--output", default="")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("--ignore-not-found", action="store_true")
    p.add_argument("--request-timeout")  # etcd answers at once here
    p.add_argument("--server")  # every API server here reads the same etcd
    args = p.parse_args(argv)
    if not Path(args.kubeconfig).is_file():
        print(f"error: stat {args.kubeconfig}: no such file or directory", file=sys.stderr)
        return 1
    if args.resource == "pods":  # no pod runs here: the kubelet and its pods are not stood in
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": []}))
        return 0
    if args.verb == "delete":
        if not args.name:
            print("error: resource name may not be empty", file=sys.stderr)
            return 1
        if counted_run(node, "node-deletes") <= node.node_delete_fails:
            print("Unable to connect to the server: EOF", file=sys.stderr)
            return 1
        proc = etcdctl(node, [node.client_url], "del", f"/registry/minions/{args.name}")
        if proc.returncode != 0:
            print(f"error: {etcd_error(proc)}", file=sys.stderr)
            return 1
        if proc.stdout.strip() == "1":
            print(f'node "{args.name}" deleted')
        elif not args.ignore_not_found:
            print(f'Error from server (NotFound): nodes "{args.name}" not found', file=sys.stderr)
            return 1
        return 0
    proc = etcdctl(
        node, [node.client_url], "get", "/registry/minions/", "--prefix", "--print-value-only"
    )
    if proc.returncode != 0:
        print(
            "The connection to the server was refused - did you specify the right host or"
            f" port? ({etcd_error(proc)})",
            file=sys.stderr,
        )
        return 1
    items = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    if args.name:
        items = [i for i in items if i["metadata"]["name"] == args.name]
    if args.output == "json":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=2))
        return 0
    if args.output == "name":
        print("\n".join(f"node/{it['metadata']['name']}" for it in items))
        return 0
    print(f"{'NAME':<12}{'STATUS':<10}ROLES")
    for it in items:
        role = (
            "control-plane"
            if "node-role.kubernetes.io/control-plane" in it["metadata"]["labels"]
            else "<none>"
        )
        ready = [c["status"] for c in it["status"]["conditions"] if c["type"] == "Ready"]
        status = "Ready" if ready == ["True"] else "NotReady"
        print(f"{it['metadata']['name']:<12}{status:<10}{role}")
    return 0


# ---- cloud-init ----------------------------------------------------------------------------------


def cloud_init(argv: list[str]) -> int:
    """`cloud-init status [--wait]` on a node that is up: its first boot is done (exit 0)."""
    p = argparse.ArgumentParser(prog="cloud-init")
    sub = p.add_subparsers(dest="cmd", required=True)
    status = sub.add_parser("status")
    status.add_argument("--wait", action="store_true")
    args = p.parse_args(argv)
    print(("\n" if args.wait else "") + "status: done")
    return 0


# ---- entry point ---------------------------------------------------------------------------------

_NODE_CONFIG: list[Path] = []


def node_config_path() -> Path:
    return _NODE_CONFIG[0]


def kubeadm(node: NodeConf, argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="kubeadm")
    sub = p.add_subparsers(dest="cmd", required=True)
    init = sub.add_parser("init")
    init.add_argument("--config")
    init.add_argument("--upload-certs", action="store_true")
    init_sub = init.add_subparsers(dest="phase")
    phase = init_sub.add_parser("phase")
    phase.add_argument("which", choices=["upload-certs"])
    phase.add_argument("--upload-certs", action="store_true", dest="phase_upload")
    phase.add_argument("--certificate-key")
    join = sub.add_parser("join")
    join.add_argument("--config", required=True)
    join.add_argument("--skip-phases", default="")
    reset = sub.add_parser("reset")
    reset.add_argument("-f", "--force", action="store_true")
    token = sub.add_parser("token")
    token.add_argument("action")
    token.add_argument("--ttl")
    sub.add_parser("start-static-pods", help="harness only: what the kubelet does after a restart")
    version = sub.add_parser("version")
    version.add_argument("-o", "--output", choices=["short"], required=True)
    args = p.parse_args(argv)
    if args.cmd == "version":
        print(f"v{node.version}")
        return 0
    if args.cmd == "init":
        return cmd_upload_certs(node, args) if args.phase else cmd_init(node, args)
    if args.cmd == "start-static-pods":
        start_static_pods(node)
        return 0
    handlers = {"join": cmd_join, "reset": cmd_reset, "token": cmd_token}
    result: int = handlers[args.cmd](node, args)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--node-config", type=Path, required=True)
    p.add_argument(
        "tool", choices=["kubeadm", "kubectl", "kubelet", "apiserver", "cloud-init", "systemctl"]
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    args = p.parse_args()
    if args.tool == "cloud-init":
        return cloud_init(args.rest)
    _NODE_CONFIG.append(args.node_config)
    node = NodeConf.load(args.node_config)
    if args.tool == "kubelet":  # only `kubelet --version`: no kubelet runs here
        print(f"Kubernetes v{node.version}")
        return 0
    try:
        if args.tool == "apiserver":
            return serve_apiserver(node)
        if args.tool == "kubectl":
            return kubectl(node, args.rest)
        if args.tool == "systemctl":
            return systemctl(node, args.rest)
        return kubeadm(node, args.rest)
    except Fail as e:
        print(str(e), file=sys.stderr)
        return 1
    except subprocess.TimeoutExpired as e:
        print(f"timed out: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
