"""`lab upgrade NODE`: one node to kubernetes.version, in kubeadm's own order ("Upgrading kubeadm
clusters"), from the node image built for that version and without a registry.

- The first control plane: `kubeadm upgrade plan`, then `kubeadm upgrade apply` (the control
  plane's static pods, etcd, kube-proxy and CoreDNS cluster-wide), then drain, kubelet, uncordon.
- Every other control plane: `kubeadm upgrade node`, drain, kubelet, uncordon.
- A worker: drain, `kubeadm upgrade node`, kubelet, uncordon.

What the node needs first comes over SSH from `.lab/images/k8s-node-v<version>/` (image/build.sh):
kubeadm, kubelet and kubectl staged under /var/lib/lab/releases/, and the container images that
its containerd lacks imported; kubeadm is told never to pull. A node already at the version is a
no-op, read on the node alone; one whose upgrade stopped part-way (its marker is left) goes
through the steps again, each idempotent, so `pulumi up` again continues where a failed step
stopped. The chain puts a gate after each control plane (lab.topology.upgrade_plan).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shlex
import tarfile
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from lab import releases
from lab.config import ConfigError
from lab.ops.common import OpFailed, Session
from lab.ops.detached import Detached
from lab.ops.leader import leader_kept_off
from lab.ops.node import KUBECONFIG, admin_node, gist, kubectl_until_ok
from lab.render.kubeadm import UPGRADE_PATH, release_tags, upgrade_configuration
from lab.ssh import SshError
from lab.topology import Node

STAGE = "/var/lib/lab/releases"  # per version: the kubeadm, kubelet and kubectl to install
BINARIES = ("kubeadm", "kubelet", "kubectl")
# What every node runs of a release besides its own control plane: `kubeadm upgrade apply`
# rolls kube-proxy and CoreDNS out cluster-wide, so every node has them before it.
ADDONS = ("kube-proxy", "coredns", "pause")
TRANSFER_SECONDS = 120  # per file, times the session's slowdown
DRAIN_SECONDS = 600


@dataclass(frozen=True)
class Bundle:
    """The built release's files on this host: bin/ and one docker archive per image."""

    version: str
    root: Path

    def binary(self, name: str) -> Path:
        return self.root / "bin" / name

    @cached_property
    def archives(self) -> dict[str, tuple[str, Path]]:
        """Archive name (kube-proxy) -> (the image's tag, the archive)."""
        out = {}
        for path in sorted((self.root / "archives").glob("*.tar")):
            with tarfile.open(path) as tar:
                member = tar.extractfile("manifest.json")
                assert member is not None
                tag = json.load(member)[0]["RepoTags"][0]
            out[path.stem] = (tag, path)
        return out


@dataclass(frozen=True)
class NodeState:
    """What a node holds, read on the node itself: its kubeadm and kubelet binaries' versions, its
    control-plane static pods' images (none on a worker), and whether an upgrade of it is
    unfinished (its marker: written before anything changes, removed once it is uncordoned)."""

    kubeadm: str
    kubelet: str
    images: tuple[str, ...]
    unfinished: bool

    def at(self, version: str, etcd_tag: str | None, control_plane: bool) -> bool:
        want = f"v{version}"
        done = self.kubeadm == want and self.kubelet == want and not self.unfinished
        return done and (not control_plane or control_plane_at(self.images, version, etcd_tag))


def control_plane_at(images: tuple[str, ...], version: str, etcd_tag: str | None) -> bool:
    """The static pods run the release: kube-* at its version, etcd at its tag (when known)."""
    if not images:
        return False
    for image in images:
        name, _, tag = image.rpartition(":")
        if name.endswith("/etcd"):
            if etcd_tag is not None and tag != etcd_tag:
                return False
        elif tag != f"v{version}":
            return False
    return True


MARKER = "/etc/kubernetes/lab/upgrading"
# One line per fact: kubeadm=..., kubelet=..., unfinished, image=... per static pod image.
PROBE = (
    'echo "kubeadm=$(kubeadm version -o short 2>/dev/null)";'
    ' echo "kubelet=$(kubelet --version 2>/dev/null)";'
    f" [ -e {MARKER} ] && echo unfinished;"
    " cat /etc/kubernetes/manifests/*.yaml 2>/dev/null | sed -n 's/^ *image: */image=/p'"
)


def parse_probe(stdout: str) -> NodeState:
    fields: dict[str, str] = {}
    images = []
    for line in stdout.splitlines():
        key, _, value = line.partition("=")
        if key == "image":
            images.append(value.strip().strip("\"'"))
        else:
            fields[key.strip()] = value.strip()
    return NodeState(
        fields.get("kubeadm", ""),
        fields.get("kubelet", "").removeprefix("Kubernetes "),
        tuple(images),
        "unfinished" in fields,
    )


async def node_state(session: Session, node: Node) -> NodeState:
    r = await session.shell(node).run(PROBE, timeout=60 * session.slowdown)
    return parse_probe(r.stdout)


async def upgrade(session: Session, name: str) -> None:
    cfg, node = session.cfg, session.topo.node(name)
    target, release = cfg.kubernetes.version, cfg.release
    etcd_tag = release.etcd_tag if release else None
    if (await node_state(session, node)).at(target, etcd_tag, node.is_control_plane):
        session.say(node.name, f"already at v{target}")
        return
    if release is None:
        raise ConfigError(
            f"kubernetes.version {target} is not a release the lab's image builds"
            " (image/versions.tsv): lab upgrade installs that image's binaries"
        )
    bundle = Bundle(target, releases.bundle_path(target))
    if not bundle.root.is_dir():
        raise ConfigError(
            f"kubernetes.version {target}: {bundle.root} is missing: run `make image`, which"
            " builds the image of kubernetes.version"
        )
    admin = await admin_node(session)
    cluster = await cluster_version(session, admin)
    first = node.name == session.topo.first.name
    if cluster != target:
        if why := releases.upgrade_refusal(cluster, target):
            raise ConfigError(why)
        if not first:
            raise OpFailed(
                f"the cluster is at {cluster}: `lab upgrade {session.topo.first.name}` first"
                " (kubeadm upgrade apply runs there)"
            )
    if not node.is_control_plane:
        behind = [
            cp.name
            for cp in session.topo.control_planes
            if not control_plane_at((await node_state(session, cp)).images, target, etcd_tag)
        ]
        if behind:
            raise OpFailed(
                f"control plane(s) {', '.join(behind)} not yet at {target}: upgrade them first"
                " (a kubelet may not be newer than the API servers)"
            )
    await upgrade_node(session, admin, node, bundle, release, first)


async def upgrade_node(
    session: Session,
    admin: Node,
    node: Node,
    bundle: Bundle,
    release: releases.Release,
    first: bool,
) -> None:
    cfg, target, sh = session.cfg, release.kubernetes, session.shell(node)
    session.say(node.name, f"upgrading to v{target}")
    start = time.monotonic()
    deadline = start + cfg.tuning.join_max_wait_seconds + cfg.tuning.cp_stabilize_timeout_seconds
    quick = 60 * session.slowdown
    await sh.run(
        f"mkdir -p {MARKER.rsplit('/', 1)[0]} && touch {MARKER}", timeout=quick, check=True
    )
    # `kubeadm upgrade apply` rolls kube-proxy and CoreDNS out everywhere: every node gets them.
    others = [n for n in session.topo.nodes if n != node] if first else []
    await asyncio.gather(
        stage(session, node, bundle, everything=node.is_control_plane),
        *(stage(session, other, bundle, everything=False) for other in others),
    )
    await install(session, node, target, "kubeadm")
    await write_upgrade_config(session, node)
    if node.is_control_plane:
        async with leader_kept_off(session, node):  # kubeadm restarts its etcd: not the leader's
            await kubeadm_upgrade(session, admin, node, release, first, deadline)
    await drain(session, admin, node, deadline)
    try:
        if not node.is_control_plane:
            await kubeadm_upgrade(session, admin, node, release, first, deadline)
        await install(session, node, target, "kubelet", "kubectl")
        await sh.run(
            "systemctl daemon-reload && systemctl restart kubelet", timeout=quick, check=True
        )
        await wait_for_kubelet(session, admin, node, f"v{target}", deadline)
    except (OpFailed, SshError) as e:
        raise OpFailed(f"{e}; {await uncordon_after_failure(session, admin, node)}") from None
    await uncordon(session, admin, node)
    await sh.run(f"rm -f {MARKER}", timeout=quick, check=True)
    session.say(node.name, f"at v{target} in {time.monotonic() - start:.0f}s")


async def kubeadm_upgrade(
    session: Session,
    admin: Node,
    node: Node,
    release: releases.Release,
    first: bool,
    deadline: float,
) -> None:
    """`kubeadm upgrade apply` on the first control plane (its plan first, and the release's
    tags in the cluster's configuration, which apply reads), `kubeadm upgrade node` elsewhere;
    detached, and not run again once done (lab.ops.detached)."""
    target, job = release.kubernetes, Detached(f"upgrade-v{release.kubernetes}")
    if first:
        await set_release_tags(session, admin, release)
        print(
            await must_run(session, node, f"kubeadm upgrade plan --config {UPGRADE_PATH}"), end=""
        )
        apply = f"kubeadm upgrade apply --config {UPGRADE_PATH} --yes"
        print(await job.run(session, node, apply, deadline, "kubeadm upgrade apply"), end="")
        releases.record(session.cfg.state_dir, target)
    else:
        command = f"kubeadm upgrade node --config {UPGRADE_PATH}"
        print(await job.run(session, node, command, deadline, "kubeadm upgrade node"), end="")


async def cluster_version(session: Session, admin: Node) -> str:
    """kubernetesVersion of the cluster's kubeadm configuration (without the v)."""
    cm = await kubeadm_config_map(session, admin)
    config = yaml.safe_load(cm["data"]["ClusterConfiguration"])
    return str(config["kubernetesVersion"]).removeprefix("v")


async def kubeadm_config_map(session: Session, admin: Node) -> dict[str, Any]:
    out = await kubectl_until_ok(
        session,
        admin,
        "-n kube-system get configmap kubeadm-config -o json",
        time.monotonic() + 120 * session.slowdown,
    )
    cm: dict[str, Any] = json.loads(out)
    return cm


async def set_release_tags(session: Session, admin: Node, release: releases.Release) -> None:
    """The cluster's ClusterConfiguration names the new release's etcd and CoreDNS tags, which
    `kubeadm upgrade apply` then deploys (kubeadm reads them from the cluster, not from a file)."""
    cm = await kubeadm_config_map(session, admin)
    config = yaml.safe_load(cm["data"]["ClusterConfiguration"])
    tags = release_tags(release)
    local = config.setdefault("etcd", {}).setdefault("local", {})
    if (
        local.get("imageTag") == tags["etcd"]["local"]["imageTag"]
        and config.get("dns", {}).get("imageTag") == tags["dns"]["imageTag"]
    ):
        return
    local["imageTag"] = tags["etcd"]["local"]["imageTag"]
    config.setdefault("dns", {})["imageTag"] = tags["dns"]["imageTag"]
    cm["data"]["ClusterConfiguration"] = yaml.safe_dump(config, sort_keys=False)
    await must_run(
        session, admin, f"kubectl --kubeconfig {KUBECONFIG} replace -f -", stdin=json.dumps(cm)
    )
    session.say(
        admin.name,
        f"kubeadm-config: etcd {release.etcd_tag}, CoreDNS {release.coredns} (the image's)",
    )


async def must_run(session: Session, node: Node, command: str, stdin: str | None = None) -> str:
    """A command on the node that must succeed (within 10 min times the slowdown); its output."""
    r = await session.shell(node).run(command, input=stdin, timeout=600 * session.slowdown)
    if not r.ok:
        raise OpFailed(f"{node.name}: `{command}` failed (exit {r.exit_status}): {gist(r.output)}")
    return r.stdout


async def stage(session: Session, node: Node, bundle: Bundle, *, everything: bool) -> None:
    """The release's binaries under STAGE (unless there already) and the images the node lacks:
    every image for a control plane, ADDONS for the rest."""
    sh = session.shell(node)
    staged = f"{STAGE}/v{bundle.version}"
    r = await sh.run(
        f"cd {staged} 2>/dev/null && sha256sum {' '.join(BINARIES)} 2>/dev/null",
        timeout=60 * session.slowdown,
    )
    have = {ln.split()[1]: ln.split()[0] for ln in r.stdout.splitlines() if len(ln.split()) == 2}
    for name in BINARIES:
        data = bundle.binary(name).read_bytes()
        if have.get(name) != hashlib.sha256(data).hexdigest():
            await sh.write_file(
                f"{staged}/{name}", data, mode=0o755, timeout=TRANSFER_SECONDS * session.slowdown
            )
    listed = await sh.run("ctr -n k8s.io images ls -q", timeout=60 * session.slowdown, check=True)
    present = set(listed.stdout.split())
    wanted = [a for a in bundle.archives if everything or a in ADDONS]
    missing = [bundle.archives[a] for a in wanted if bundle.archives[a][0] not in present]
    for tag, path in missing:
        tmp = f"/var/tmp/lab-{path.name}"
        status, _, err = await sh.run_bytes(
            f"cat > {tmp} && ctr -n k8s.io images import {tmp} >/dev/null;"
            f" s=$?; rm -f {tmp}; exit $s",
            input=path.read_bytes(),
            timeout=TRANSFER_SECONDS * session.slowdown,
        )
        if status != 0:
            raise OpFailed(f"{node.name}: importing {tag} failed: {err.decode().strip()}")
    imported = ", ".join(tag.rpartition("/")[2] for tag, _ in missing) or "none missing"
    session.say(node.name, f"staged v{bundle.version}'s binaries; images imported: {imported}")


async def install(session: Session, node: Node, target: str, *names: str) -> None:
    paths = " ".join(shlex.quote(f"{STAGE}/v{target}/{n}") for n in names)
    await session.shell(node).run(
        f"install -m 0755 {paths} /usr/bin/", timeout=60 * session.slowdown, check=True
    )


async def write_upgrade_config(session: Session, node: Node) -> None:
    text = upgrade_configuration(session.cfg, node, session.domain_type)
    await session.shell(node).write_file(UPGRADE_PATH, text.encode(), mode=0o600)


async def drain(session: Session, admin: Node, node: Node, deadline: float) -> None:
    """Evict the node's pods, respecting PodDisruptionBudgets; as Kubespray and Cluster API
    drain, pods no controller recreates (bare pods) are deleted too (--force), else one test pod
    left on a node would stop the upgrade there."""
    session.say(node.name, "draining")
    await kubectl_until_ok(
        session,
        admin,
        f"drain {node.name} --ignore-daemonsets --delete-emptydir-data --force"
        f" --timeout={DRAIN_SECONDS * session.slowdown:.0f}s",
        deadline,
    )


async def uncordon(session: Session, admin: Node, node: Node) -> None:
    await kubectl_until_ok(
        session, admin, f"uncordon {node.name}", time.monotonic() + 300 * session.slowdown
    )
    session.say(node.name, "uncordoned")


async def uncordon_after_failure(session: Session, admin: Node, node: Node) -> str:
    """After a failed step: the node back in service if its kubelet is Ready, else said."""
    try:
        info = json.loads(
            await kubectl_until_ok(
                session, admin, f"get node {node.name} -o json", time.monotonic() + 60
            )
        )
        if node_ready(info):
            await uncordon(session, admin, node)
            return f"{node.name} is Ready and uncordoned; `pulumi up` again continues from here"
    except (OpFailed, SshError):
        pass
    return (
        f"{node.name} is left cordoned (not Ready): `lab diagnose`, then `pulumi up` again"
        f" (or `lab kubectl uncordon {node.name}`)"
    )


def node_ready(info: dict[str, Any]) -> bool:
    conditions = info.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


async def wait_for_kubelet(
    session: Session, admin: Node, node: Node, version: str, deadline: float
) -> None:
    """The node Ready again with its kubelet reporting `version`."""
    while True:
        try:
            out = await kubectl_until_ok(session, admin, f"get node {node.name} -o json", deadline)
            info = json.loads(out)
            if node_ready(info) and info["status"]["nodeInfo"]["kubeletVersion"] == version:
                session.say(node.name, f"kubelet {version} Ready")
                return
        except json.JSONDecodeError:
            pass
        if time.monotonic() > deadline:
            raise OpFailed(f"{node.name}: kubelet not Ready at {version} in time")
        await asyncio.sleep(5 * session.slowdown)


async def bring_to_release(session: Session, node: Node) -> None:
    """Before a node joins: a machine made from an older image (one added after an upgrade; the
    lab's base image stays the one it was made from) gets the configured release's kubeadm,
    kubelet, kubectl and images, so it joins at the cluster's version."""
    target, release = session.cfg.kubernetes.version, session.cfg.release
    state = await node_state(session, node)
    if release is None or state.kubeadm == f"v{target}":
        return
    bundle = Bundle(target, releases.bundle_path(target))
    if not bundle.root.is_dir():
        raise OpFailed(
            f"{node.name} has kubeadm {state.kubeadm or 'unknown'} and the cluster runs {target}:"
            f" {bundle.root} is missing; run `make image`"
        )
    session.say(node.name, f"made with {state.kubeadm}: installing v{target} before it joins")
    await stage(session, node, bundle, everything=node.is_control_plane)
    await install(session, node, target, *BINARIES)
