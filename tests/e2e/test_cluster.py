"""A real cluster, 1 control plane + 1 worker, from `pulumi up` with the built engine and plugins.

The cases run in order on one stack. The step table (from Pulumi's own event log, and the
progress lines of `lab init`) is printed by the first case: `make test-e2e` shows it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab.config import IMAGE_KUBERNETES
from lab.render import flannel

from .conftest import Libvirtd, Stack

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / ".lab" / "images" / f"k8s-node-v{IMAGE_KUBERNETES}.qcow2"
MANIFEST = ROOT / ".lab" / "images" / "manifest.json"
LAB = ROOT / ".venv" / "bin" / "lab"
UP_TIMEOUT = 3600
API_RESTART = 300
# What kubectl says when the API server is restarting, or too loaded to finish a request within
# its 60 s, or (EOF from haproxy at the VIP) taken out by haproxy's health check: every command
# the cases run through `Cluster.lab` is safe to repeat.
API_UNAVAILABLE = (
    "was refused",
    "connection refused",
    "TLS handshake timeout",
    "unable to return",
    "request did not complete within requested timeout",
    "Unable to connect to the server: EOF",
)


@dataclass
class Cluster:
    stack: Stack
    libvirtd: Libvirtd
    config: Path
    tmp: Path
    name: str

    def lab(
        self, command: str, *args: str, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`lab COMMAND --config ... ARGS` inside the lab's namespace; it must succeed. An API
        server that is restarting or overloaded (emulated guests are slow) gets up to
        API_RESTART seconds; each wait is printed, so the log shows how often it happened."""
        argv = ["ip", "netns", "exec", self.libvirtd.netns, str(LAB), command]
        deadline = time.monotonic() + API_RESTART
        while True:
            out = subprocess.run(
                [*argv, "--config", str(self.config), *args],
                input=input or "",
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=600,
            )
            unavailable = any(s in out.stderr for s in API_UNAVAILABLE)
            if out.returncode == 0 or not unavailable or time.monotonic() > deadline:
                break
            reason = out.stderr.strip().splitlines()[-1]
            print(f"lab {command} {' '.join(args)}: API server unavailable ({reason}); waiting")
            time.sleep(10)
        assert out.returncode == 0, f"lab {command} {args}: {out.stderr}{out.stdout}"
        return out

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.lab("kubectl", *args, "-o", "json").stdout)

    def on(self, node: str, *command: str) -> str:
        return self.lab("ssh", node, "--", *command).stdout.strip()


@pytest.fixture(scope="module")
def cluster(libvirtd: Libvirtd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not IMAGE.is_file():
        pytest.fail(f"the node image {IMAGE} is missing: run `make image`")
    tmp = tmp_path_factory.mktemp("e2e")
    name = f"e2e{os.getpid()}"
    config = tmp / "cluster.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "cluster": {"name": name},
                "network": {"name": name, "cidr": "10.40.0.0/24"},
                "control_plane": {"count": 1, "cpus": 2, "memory_mib": 3072, "disk_gib": 10},
                "workers": {"count": 1, "cpus": 1, "memory_mib": 2048, "disk_gib": 10},
                "image": {"source": str(IMAGE)},
                "libvirt": {
                    "uri": libvirtd.uri,
                    "pool": name,
                    "pool_path": str(tmp / "pool"),
                    "domain_type": "qemu",
                },
                "state_dir": str(tmp / "state"),
            }
        )
    )
    stack = Stack.create("e2e", {"lab:config": str(config)}, netns=libvirtd.netns)
    c = Cluster(stack, libvirtd, config, tmp, name)
    try:
        yield c
    finally:
        stack.pulumi("destroy", "--yes", "--skip-preview", check=False, timeout=1800)
        stack.remove()


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


PHASES = (
    ("SSH answers and cloud-init is done", "cp1 boot to SSH + cloud-init"),
    ("kubeadm init done", "cp1 kubeadm init"),
    ("flannel applied", "flannel applied"),
)


def step_table(log: Path) -> list[tuple[str, float]]:
    """(step, seconds) of one `pulumi up`: Pulumi's event timestamps per resource, and
    cp1-init split by the progress lines `lab init` prints (seconds since it started)."""
    start: dict[str, float] = {}
    end: dict[str, float] = {}
    outputs: dict[str, Any] = {}
    first = None
    for e in events(log):
        first = e["timestamp"] if first is None else first
        for key, into in (("resourcePreEvent", start), ("resOutputsEvent", end)):
            if key in e:
                md = e[key]["metadata"]
                name = md["urn"].rsplit("::", 1)[-1]
                into.setdefault(name, e["timestamp"])
                if key == "resOutputsEvent":
                    outputs[name] = md.get("new", {}).get("outputs", {})
    assert first is not None
    domains = [n for n in end if n.endswith("-domain")]
    rows = [("network, pool, base image", max(end[n] for n in ("lab-network", "base-image")))]
    rows.append(("machines (domains defined)", max(end[n] for n in domains)))
    said = {
        m[2]: start["cp1-init"] + float(m[1])
        for m in re.finditer(r"\[\s*([\d.]+)s\] cp1: (.+)", str(outputs["cp1-init"]["stdout"]))
    }
    rows += [(label, said[message]) for message, label in PHASES]
    rows += [(step, end[step]) for step in ("cp1-gate", "worker1-join", "verify")]
    table, before = [], first
    for label, at in rows:
        table.append((label, at - before))
        before = at
    table.append(("total (pulumi up)", max(end.values()) - first))
    floor = said["kubeadm init done"] - end["cp1-domain"]
    table.append(("floor: cp1 boot + kubeadm init", floor))
    return table


def test_1_up_brings_both_nodes_ready(cluster: Cluster) -> None:
    log = cluster.tmp / "events-up.jsonl"
    began = time.monotonic()
    out = cluster.stack.pulumi(
        "up", "--yes", "--skip-preview", "--event-log", str(log), timeout=UP_TIMEOUT, check=False
    )
    wall = time.monotonic() - began
    assert out.returncode == 0, out.stdout + out.stderr
    print(f"\npulumi up: {wall:.0f} s wall\n{'step':<34}{'seconds':>8}")
    for label, seconds in step_table(log):
        print(f"{label:<34}{seconds:>8.0f}")
    nodes = cluster.kubectl_json("get", "nodes")["items"]
    ready = {
        n["metadata"]["name"]: any(
            c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"]
        )
        for n in nodes
    }
    assert ready == {"cp1": True, "worker1": True}


def test_2_every_pod_runs(cluster: Cluster) -> None:
    deadline, pods = time.monotonic() + 600, []
    while time.monotonic() < deadline:
        pods = cluster.kubectl_json("get", "pods", "--all-namespaces")["items"]
        waiting = [p["metadata"]["name"] for p in pods if not running(p)]
        if not waiting:
            break
        time.sleep(10)
    names = [p["metadata"]["name"] for p in pods]
    for app in ("coredns-", "kube-proxy-", "kube-flannel-ds-"):
        assert any(n.startswith(app) for n in names), f"no {app}* pod: {names}"
    assert [p["metadata"]["name"] for p in pods if not running(p)] == []
    restarts = {
        p["metadata"]["name"]: sum(c["restartCount"] for c in p["status"]["containerStatuses"])
        for p in pods
    }
    print(f"\ncontainer restarts since up: {restarts}")
    assert {"etcd-cp1", "kube-apiserver-cp1"} <= {p["metadata"]["name"] for p in pods}


def running(pod: dict[str, Any]) -> bool:
    statuses = pod["status"].get("containerStatuses", [])
    return (
        pod["status"]["phase"] == "Running" and bool(statuses) and all(s["ready"] for s in statuses)
    )


def test_3_nodes_run_the_configured_version_and_pulled_nothing(cluster: Cluster) -> None:
    built = set(json.loads(MANIFEST.read_text())["containerd_images"])
    for node in ("cp1", "worker1"):
        assert cluster.on(node, "kubeadm", "version", "-o", "short") == f"v{IMAGE_KUBERNETES}"
        kubelet = cluster.on(node, "kubelet", "--version")
        assert kubelet == f"Kubernetes v{IMAGE_KUBERNETES}"
        listed = cluster.on(node, "ctr", "-n", "k8s.io", "images", "ls", "-q").split()
        named = {i for i in listed if not i.startswith("sha256:")}
        assert named == built, f"{node}: images not from the node image: {named - built}"
    reasons = {e["reason"] for e in cluster.kubectl_json("get", "events", "-A")["items"]}
    assert not reasons & {"Pulling", "Failed", "ErrImageNeverPull"}, reasons


PROBE = """apiVersion: v1
kind: Pod
metadata: {name: NAME, labels: {app: NAME}}
spec:
  nodeName: NODE
  restartPolicy: Never
  tolerations: [{operator: Exists}]
  containers:
  - name: main
    image: IMAGE
    imagePullPolicy: Never
    command: COMMAND
"""


def pod(name: str, node: str, image: str, command: list[str]) -> str:
    return (
        PROBE.replace("NAME", name)
        .replace("NODE", node)
        .replace("IMAGE", image)
        .replace("COMMAND", json.dumps(command))
    )


def test_4_a_pod_on_the_worker_reaches_a_pod_on_cp1_by_ip_and_by_service_name(
    cluster: Cluster,
) -> None:
    """etcd's image serves HTTP (its /health); flanneld's image has bash for a client."""
    server = pod(
        "web",
        "cp1",
        "registry.k8s.io/etcd:3.6.5-0",
        [
            "etcd",
            "--data-dir=/tmp/etcd",
            "--listen-client-urls=http://0.0.0.0:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
        ],
    )
    service = yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 2379}]},
        }
    )
    manifests = cluster.tmp / "web.yaml"
    manifests.write_text(server + "---\n" + service)
    apply(cluster, manifests)
    cluster.lab("kubectl", "wait", "--for=condition=Ready", "pod/web", "--timeout=600s")
    ip = cluster.kubectl_json("get", "pod", "web")["status"]["podIP"]
    script = FETCH + f"; fetch {ip} 2379 && fetch web.default.svc.cluster.local 80"
    client = cluster.tmp / "client.yaml"
    client.write_text(pod("client", "worker1", flannel.FLANNEL_IMAGE, ["bash", "-c", script]))
    apply(cluster, client)
    cluster.lab(
        "kubectl",
        "wait",
        "--for=jsonpath={.status.phase}=Succeeded",
        "pod/client",
        "--timeout=600s",
    )
    logs = cluster.lab("kubectl", "logs", "client").stdout
    assert logs.count('"health":"true"') == 2, logs


# GET /health, tried every 5 s for 5 min: Ready means etcd's container started, not that it
# listens yet, and kube-proxy on the worker rejects the service's port until it has seen the
# endpoint; both take a while on an emulated guest. Each refused try is in the client's log.
FETCH = """fetch() {
  for _ in $(seq 60); do
    (exec 3<>/dev/tcp/$1/$2 && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3) && return
    sleep 5
  done
  return 1
}"""


def apply(cluster: Cluster, manifest: Path) -> None:
    cluster.lab("kubectl", "apply", "-f", "-", input=manifest.read_text())


def test_5_etcd_has_one_voter_and_no_learner_and_cp1_holds_the_vip(cluster: Cluster) -> None:
    """Read by `lab` itself from the real etcd, over TLS with the client certs it fetched; every
    kubectl of these cases went through the VIP and haproxy (admin.conf's server)."""
    report = json.loads(cluster.lab("verify", "--json").stdout)
    assert report["ok"], report
    assert {"check": "endpoint VIP", "ok": True, "detail": "on cp1"} in report["checks"]
    diagnosis = json.loads(cluster.lab("diagnose", "--json").stdout)
    members = [(m["name"], m["is_learner"], m["started"]) for m in diagnosis["members"]]
    assert members == [("cp1", False, True)]
    assert diagnosis["stale_learners"] == []


def test_6_a_second_up_changes_nothing(cluster: Cluster) -> None:
    out = cluster.stack.pulumi("up", "--yes", "--expect-no-changes", check=False, timeout=1800)
    assert out.returncode == 0, out.stdout + out.stderr


def test_7_destroy_leaves_no_domain_volume_or_network(cluster: Cluster) -> None:
    out = cluster.stack.pulumi("destroy", "--yes", "--skip-preview", check=False, timeout=1800)
    assert out.returncode == 0, out.stdout + out.stderr
    virsh = cluster.libvirtd.virsh
    assert cluster.name not in virsh("list", "--all", "--name")
    assert cluster.name not in virsh("net-list", "--all", "--name")
    assert cluster.name not in virsh("pool-list", "--all", "--name")
    pool = cluster.tmp / "pool"
    assert not pool.exists() or not list(pool.iterdir())
