"""A real cluster, 1 control plane + 1 worker, from `pulumi up` with the built engine and plugins,
made at the previous minor release (LAB_UPGRADE_FROM) and upgraded in place to the newest.

The cases run in order on one stack. The step table (from Pulumi's own event log, and the
progress lines of `lab init`) is printed by the first case and by the upgrade: `make test-e2e`
shows both.
"""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab import releases
from lab.render import flannel

from .cluster import UPGRADE_TO, Cluster, cluster_on, manifest_of, upgrade_from
from .conftest import Libvirtd
from .upgrade import assert_upgraded_in_place, workload_serving

CIDR = "10.40.0.0/24"


@pytest.fixture(scope="module")
def cluster(libvirtd: Libvirtd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("e2e")
    with cluster_on(libvirtd, tmp, CIDR, 1, 1, upgrade_from()) as cluster:
        yield cluster


def test_1_up_brings_both_nodes_ready(cluster: Cluster) -> None:
    cluster.up_with_table("up")
    assert cluster.ready_nodes() == {"cp1": True, "worker1": True}


def test_2_every_pod_runs(cluster: Cluster) -> None:
    # 20 min: on a loaded emulated cp1 the scheduler and controller-manager lose their leader
    # lease and restart now and then (0-3 restarts per run); one run's pods were not all ready
    # after 10 min, with the scheduler restarting.
    deadline, pods = time.monotonic() + 1200, []
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


CPU_PACKAGES = "cat /sys/devices/system/cpu/cpu*/topology/physical_package_id"
CLOCKSOURCE = "/sys/devices/system/clocksource/clocksource0/current_clocksource"
# What etcd's log does on every write: dd's own rate line is printed (a figure, not asserted).
SYNC_WRITES = (
    "dd if=/dev/zero of=/var/tmp/lab-sync bs=4k count=50 oflag=dsync 2>&1 | tail -n 1;"
    " rm -f /var/tmp/lab-sync"
)


def test_3_nodes_run_the_configured_version_and_pulled_nothing(cluster: Cluster) -> None:
    version = upgrade_from()
    built = set(manifest_of(version)["containerd_images"])
    for node in ("cp1", "worker1"):
        assert cluster.on(node, "kubeadm", "version", "-o", "short") == f"v{version}"
        kubelet = cluster.on(node, "kubelet", "--version")
        assert kubelet == f"Kubernetes v{version}"
        listed = cluster.on(node, "ctr", "-n", "k8s.io", "images", "ls", "-q").split()
        named = {i for i in listed if not i.startswith("sha256:")}
        assert named == built, f"{node}: images not from the node image: {named - built}"
        # One socket (lab.render.domain), so the kernel keeps the TSC for its clock.
        packages = cluster.on(node, "sh", "-c", CPU_PACKAGES).split()
        clock = cluster.on(node, "cat", CLOCKSOURCE)
        print(f"\n{node}: {len(packages)} vCPU(s) on socket(s) {set(packages)}, clock {clock}")
        assert set(packages) == {"0"}, packages
        # Disks in cache mode unsafe (lab.render.domain): a guest's flush does not wait on the host.
        xml = ET.fromstring(cluster.libvirtd.virsh("dumpxml", f"{cluster.name}-{node}"))
        caches = [d.get("cache") for d in xml.findall("devices/disk[@device='disk']/driver")]
        assert caches == ["unsafe", "unsafe"], caches
        print(f"{node}: 50 synchronous 4 KiB writes: {cluster.on(node, 'sh', '-c', SYNC_WRITES)}")
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
        f"registry.k8s.io/etcd:{releases.releases()[upgrade_from()].etcd_tag}",
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
    # `lab status`: the same lab on one screen, its machines read from libvirt
    began = time.monotonic()
    screen = cluster.lab("status").stdout
    print(f"\nlab status ({time.monotonic() - began:.1f} s):\n{screen}")
    assert screen.rstrip().endswith(f"lab {cluster.name}: healthy"), screen
    status = json.loads(cluster.lab("status", "--json").stdout)
    assert [(n["name"], n["machine"], n["ready"]) for n in status["nodes"]] == [
        ("cp1", "running", True),
        ("worker1", "running", True),
    ]
    assert [(m["name"], m["role"], m["leader"]) for m in status["etcd"]] == [("cp1", "voter", True)]
    assert status["vip_holder"] == "cp1"


def namespaces(cluster: Cluster) -> set[str]:
    return {n["metadata"]["name"] for n in cluster.kubectl_json("get", "namespaces")["items"]}


def member_ids(cluster: Cluster) -> dict[str, str]:
    return {m["name"]: m["id"] for m in cluster.diagnosis()["members"]}


def test_5b_a_snapshot_restore_brings_the_cluster_back_as_saved(cluster: Cluster) -> None:
    """Every machine's disks and memory, saved while all are paused: after the restore a
    namespace made since is gone, one deleted since is back, etcd has its member IDs, and
    `lab verify` passes. The snapshot stays for the next cases: the upgrade keeps it, `lab`
    refuses to restore it at the new version, and `pulumi destroy` deletes it."""
    cluster.lab("kubectl", "create", "namespace", "made-before")
    ids = member_ids(cluster)
    began = time.monotonic()
    cluster.lab("snapshot", "save", "base")
    saved = time.monotonic() - began
    [record] = json.loads(cluster.lab("snapshot", "list", "--json").stdout)
    cluster.lab("kubectl", "create", "namespace", "made-after")
    cluster.lab("kubectl", "delete", "namespace", "made-before", "--wait=false")
    assert "made-after" in namespaces(cluster)
    began = time.monotonic()
    out = cluster.lab("snapshot", "restore", "base", timeout=1800)
    restored = time.monotonic() - began
    print(
        f"\n{out.stdout}\nsnapshot of 1 + 1: save {saved:.0f} s, restore {restored:.0f} s,"
        f" {record['disk_bytes'] / 2**20:.0f} MiB of memory held, etcd {record['etcd_bytes']} B"
    )
    assert record["disk_bytes"] > 2**28, record  # both machines' memory, held by the snapshot
    seen = namespaces(cluster)
    assert "made-before" in seen and "made-after" not in seen, seen
    assert member_ids(cluster) == ids
    assert json.loads(cluster.lab("verify", "--json").stdout)["ok"]


def test_5c_the_not_ready_drill_is_diagnosed_and_recovered(cluster: Cluster) -> None:
    """`lab rehearse not-ready`: the worker's kubelet stopped, named by `lab diagnose` once the
    node controller marks the node NotReady, started again, the node Ready, the snapshot
    restored; the rejoin drills need 3 control planes (refused here, `make e2e-ha` plays them)."""
    refused = cluster.lab("rehearse", "peer-blocked", check=False)
    assert refused.returncode == 2 and "needs 3 control planes" in refused.stderr
    began = time.monotonic()
    out = cluster.lab("rehearse", "not-ready", "--json", timeout=3600)
    [row] = json.loads(out.stdout)
    print(f"\nlab rehearse not-ready: {time.monotonic() - began:.0f} s\n{row}")
    assert row["ok"], row
    assert row["diagnosed"] == "node worker1 NotReady"
    assert row["members_before"] == row["members_after"] == ["cp1"]
    assert cluster.ready_nodes() == {"cp1": True, "worker1": True}


def test_6_a_raised_version_upgrades_in_place_with_the_workload_serving(cluster: Cluster) -> None:
    """`pulumi preview` shows only the upgrade chain; `pulumi up` runs it: cp1 (kubeadm upgrade
    apply), its gate, the worker, verify. A Deployment of 2 behind a NodePort Service is asked
    once a second throughout; how many requests failed is printed, not asserted."""
    with workload_serving(cluster, upgrade_from(), CIDR) as workload:
        assert_upgraded_in_place(cluster, UPGRADE_TO, workload)


def test_6b_the_snapshot_of_the_earlier_release_is_refused_after_the_upgrade(
    cluster: Cluster,
) -> None:
    out = cluster.lab("snapshot", "restore", "base", check=False)
    assert out.returncode == 2 and f"v{upgrade_from()}" in out.stderr, out.stderr


def test_7_a_second_up_changes_nothing(cluster: Cluster) -> None:
    cluster.assert_second_up_changes_nothing()


def test_8_destroy_leaves_no_domain_volume_or_network(cluster: Cluster) -> None:
    """The snapshot of case 5b goes first (libvirt would not delete a machine that has one)."""
    cluster.assert_destroy_leaves_nothing()
    assert json.loads(cluster.lab("snapshot", "list", "--json").stdout) == []
