"""The in-place upgrade both e2e clusters run: a workload served throughout, the preview that must
show only the upgrade chain, `pulumi up`, and what must hold after it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import yaml

from lab import releases
from lab.config import load_config
from lab.topology import Step, build_topology, upgrade_plan

from .cluster import ROOT, Cluster

NODE_PORT = 30080
# Requests once a second to the workload's NodePort on the worker, from the lab's namespace
# (where the guests' addresses are), each with 2 s to answer; one line per request. Bounded: it
# stops at the stop file or after its limit.
REQUESTS = r"""
import pathlib, sys, time, urllib.request
stop, url, limit = pathlib.Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
end = time.monotonic() + limit
while time.monotonic() < end and not stop.exists():
    began = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            ok = r.status == 200 and b'"health":"true"' in r.read()
    except Exception:
        ok = False
    print(f"{time.time():.0f} {'ok' if ok else 'failed'}", flush=True)
    time.sleep(max(0.0, 1 - (time.monotonic() - began)))
"""


def workload_manifests(etcd_image: str) -> str:
    """A Deployment of 2 (etcd's image serves HTTP: its /health), allowed on the control plane
    too so a drained worker's pods have somewhere to go, a PodDisruptionBudget that keeps one
    serving while a node drains, a NodePort Service, and a ConfigMap: data to find afterwards."""
    labels = {"app": "upgrade-web"}
    docs = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "upgrade-web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "tolerations": [{"operator": "Exists", "effect": "NoSchedule"}],
                        "containers": [
                            {
                                "name": "web",
                                "image": etcd_image,
                                "imagePullPolicy": "Never",
                                "command": [
                                    "etcd",
                                    "--data-dir=/tmp/etcd",
                                    "--listen-client-urls=http://0.0.0.0:2379",
                                    "--advertise-client-urls=http://127.0.0.1:2379",
                                ],
                                "readinessProbe": {
                                    "httpGet": {"path": "/health", "port": 2379},
                                    "periodSeconds": 5,
                                },
                            }
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "upgrade-web"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": labels}},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "upgrade-web"},
            "spec": {
                "type": "NodePort",
                "selector": labels,
                "ports": [{"port": 80, "targetPort": 2379, "nodePort": NODE_PORT}],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "upgrade-data"},
            "data": {"written": "before the upgrade"},
        },
    ]
    return yaml.safe_dump_all(docs)


# etcd's view every 5 s from the lab's namespace: how many members answer and which leader each
# names; one line per sample. Bounded like REQUESTS.
SAMPLES = r"""
import asyncio, pathlib, sys, time
from lab.etcd import Etcd, Status, TLSFiles
stop, certs, endpoints = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
async def main():
    async with Etcd(endpoints, TLSFiles.in_dir(certs), timeout=5) as etcd:
        end = time.monotonic() + 7200
        while time.monotonic() < end and not stop.exists():
            got = await etcd.statuses(endpoints)
            leaders = sorted({f"{s.leader:x}" for s in got.values() if isinstance(s, Status)})
            answering = sum(isinstance(s, Status) for s in got.values())
            print(f"{time.time():.0f} {answering}/{len(endpoints)} {','.join(leaders)}", flush=True)
            await asyncio.sleep(5)
asyncio.run(main())
"""


@contextmanager
def in_namespace(cluster: Cluster, name: str, script: str, *args: str) -> Iterator[list[str]]:
    """`script STOP ARGS...` run with python in the lab's namespace for the block, until the
    file STOP appears; its lines after."""
    stop, out = cluster.tmp / f"{name}.stop", cluster.tmp / f"{name}.log"
    lines: list[str] = []
    with out.open("w") as log:
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                cluster.libvirtd.netns,
                sys.executable,
                "-c",
                script,
                str(stop),
                *args,
            ],
            stdout=log,
            cwd=ROOT,
        )
        try:
            yield lines
        finally:
            stop.touch()
            proc.wait(timeout=60)
    lines += out.read_text().splitlines()


@contextmanager
def etcd_sampled(cluster: Cluster, addresses: list[str]) -> Iterator[list[str]]:
    """etcd's members' status every 5 s for the block (lines: time, answering/all, leaders)."""
    certs = load_config(cluster.config).state_dir / "etcd"
    endpoints = [f"https://{a}:2379" for a in addresses]
    with in_namespace(cluster, "etcd-samples", SAMPLES, str(certs), *endpoints) as lines:
        yield lines


def without_quorum(samples: list[str]) -> list[str]:
    """The samples in which fewer than a majority answered, or they named no single leader."""
    bad = []
    for line in samples:
        _, counts, *leaders = line.split()
        answering, members = map(int, counts.split("/"))
        named = leaders[0].split(",") if leaders else []
        if answering <= members // 2 or len(named) != 1 or named == ["0"]:
            bad.append(line)
    return bad


@dataclass
class Workload:
    """The requests' outcomes once the workload has stopped being asked."""

    lines: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(line.endswith("failed") for line in self.lines)


@contextmanager
def workload_serving(cluster: Cluster, version: str, cidr: str) -> Iterator[Workload]:
    """The workload up and Ready, then asked once a second until the block ends."""
    etcd = releases.releases()[version].etcd_tag
    cluster.lab(
        "kubectl", "apply", "-f", "-", input=workload_manifests(f"registry.k8s.io/etcd:{etcd}")
    )
    cluster.lab(
        "kubectl", "rollout", "status", "deployment/upgrade-web", "--timeout=900s", timeout=960
    )
    worker = cidr.rsplit(".", 1)[0] + ".21"  # worker1's address (lab.config: .20 + N)
    url = f"http://{worker}:{NODE_PORT}/health"
    workload = Workload()
    try:
        with in_namespace(cluster, "requests", REQUESTS, url, "7200") as workload.lines:
            yield workload  # the lines are in once the block ends
    finally:
        print(
            f"\nrequests during the upgrade: {len(workload.lines)}, failed {workload.failed}"
            f" ({100 * workload.failed / max(1, len(workload.lines)):.1f} %)"
        )


def assert_upgraded_in_place(cluster: Cluster, version: str, workload: Workload) -> None:
    """Raise kubernetes.version to `version`: the preview has only the upgrade chain; the up runs
    it; afterwards every node and control-plane pod is at `version`, etcd has the member IDs it
    had and no learner, and the data written before is there."""
    before = cluster.diagnosis()
    ids = sorted(m["id"] for m in before["members"])
    assert not [m for m in before["members"] if m["is_learner"]]
    cluster.edit_config(kubernetes={"version": version})
    preview = json.loads(cluster.stack.pulumi("preview", "--json", timeout=600).stdout)
    changed = {
        step["urn"].rsplit("::", 1)[-1]: step["op"]
        for step in preview.get("steps", [])
        if step["op"] != "same"
    }
    chain = [s.name for s in upgrade_plan_of(cluster)]
    print(f"\npulumi preview after kubernetes.version {version}: {changed}")
    assert set(changed) == set(chain), changed
    assert set(changed.values()) == {"update"}, changed  # their update: `lab upgrade`, ...
    table = cluster.up_with_table("upgrade")  # each upgrade step's seconds, in the order run
    assert [label for label, _ in table[: len(chain)]] == chain

    want = f"v{version}"
    nodes = cluster.kubectl_json("get", "nodes")["items"]
    assert {n["metadata"]["name"]: n["status"]["nodeInfo"]["kubeletVersion"] for n in nodes} == {
        n["metadata"]["name"]: want for n in nodes
    }
    assert not [n["metadata"]["name"] for n in nodes if n["spec"].get("unschedulable")]
    release = releases.releases()[version]
    pods = cluster.kubectl_json("get", "pods", "-n", "kube-system")["items"]
    for pod in pods:
        name = pod["metadata"]["name"]
        image = pod["spec"]["containers"][0]["image"]
        kube = ("kube-apiserver-", "kube-controller-manager-", "kube-scheduler-", "kube-proxy-")
        if name.startswith(kube):
            assert image.endswith(f":{want}"), (name, image)
        elif name.startswith("etcd-"):
            assert image.endswith(f":{release.etcd_tag}"), (name, image)
        elif name.startswith("coredns-"):
            assert image.endswith(f":{release.coredns}"), (name, image)
    for node in (n["metadata"]["name"] for n in nodes):
        assert cluster.on(node, "kubeadm", "version", "-o", "short") == want
    after = cluster.diagnosis()
    assert sorted(m["id"] for m in after["members"]) == ids
    assert not [m for m in after["members"] if m["is_learner"]]
    assert {s.get("version") for s in after["status"]} == {release.etcd}
    data = cluster.kubectl_json("get", "configmap", "upgrade-data")["data"]
    assert data == {"written": "before the upgrade"}
    assert releases.recorded(load_config(cluster.config).state_dir) == version


def upgrade_plan_of(cluster: Cluster) -> list[Step]:
    cfg = load_config(cluster.config)
    return upgrade_plan(build_topology(cfg), "verify", cfg.kubernetes.upgrade_workers_at_once)
