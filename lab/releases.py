"""The Kubernetes releases the lab's node image builds, and what goes with each: image/versions.tsv,
the one table the image build reads too. Also where a built release lives (.lab/images), the
version the lab's cluster runs (recorded in its state folder), and what kubeadm cannot upgrade."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

VERSIONS_TSV = Path(__file__).resolve().parent.parent / "image" / "versions.tsv"


@dataclass(frozen=True)
class Release:
    """One row: the versions kubeadm is told to run (image tags), as the image holds them."""

    kubernetes: str  # 1.37.2
    etcd: str  # 3.7.0
    coredns: str  # v1.14.6
    pause: str  # 3.10.2

    @property
    def etcd_tag(self) -> str:
        return f"{self.etcd}-0"


def minor_of(version: str) -> tuple[int, int]:
    """(1, 37) of "1.37.2" or "v1.37.2"."""
    major, minor = version.removeprefix("v").split(".")[:2]
    return int(major), int(minor)


def patch_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.removeprefix("v").split("."))


@cache
def releases(table: Path = VERSIONS_TSV) -> dict[str, Release]:
    """Kubernetes version -> its row, newest first."""
    rows = []
    for line in table.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            kubernetes, etcd, coredns, pause = line.split("\t")[:4]
            rows.append(Release(kubernetes, etcd, coredns, pause))
    rows.sort(key=lambda r: patch_key(r.kubernetes), reverse=True)
    return {r.kubernetes: r for r in rows}


def newest() -> str:
    return next(iter(releases()))


# Where `make image` leaves what it built (image/build.sh links it in from its cache), relative to
# the project root, where make, pulumi and lab run; every cluster's config and state share it.
IMAGES = Path(".lab") / "images"


def image_path(version: str) -> Path:
    """The node image `make image` builds for `version`."""
    return IMAGES / f"k8s-node-v{version}.qcow2"


def bundle_path(version: str) -> Path:
    """Beside the image: what an upgrade to `version` copies to a node (bin/, archives/)."""
    return IMAGES / f"k8s-node-v{version}"


def upgrade_refusal(current: str, target: str) -> str | None:
    """Why kubeadm cannot take a cluster at `current` to `target` (kubernetes.version), or None.
    kubeadm upgrades one minor version at a time and never downgrades."""
    if patch_key(target) < patch_key(current):
        return (
            f"kubernetes.version {target} is older than the cluster's {current}: kubeadm does not"
            f" downgrade; set {current} or a newer release"
        )
    (major, minor), (to_major, to_minor) = minor_of(current), minor_of(target)
    if to_major != major or to_minor > minor + 1:
        step = next((v for v in releases() if minor_of(v) == (major, minor + 1)), None)
        first = f"upgrade to {step} first" if step else f"upgrade to 1.{minor + 1} first"
        return (
            f"kubernetes.version {target} is more than one minor version past the cluster's"
            f" {current}: kubeadm upgrades one minor at a time; {first}"
        )
    return None


# The version the lab's cluster runs, as `lab init` made it and `lab upgrade` raised it: what a
# changed kubernetes.version is checked against before anything runs (pulumi preview, lab plan).
RECORD = "kubernetes-version"


def recorded(state_dir: Path) -> str | None:
    path = state_dir / RECORD
    return path.read_text().strip() if path.is_file() else None


def record(state_dir: Path, version: str | None) -> None:
    """Keep the cluster's version; None forgets it (the cluster is gone)."""
    path = state_dir / RECORD
    if version is None:
        path.unlink(missing_ok=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(version + "\n")


def change_refusal(state_dir: Path, version: str) -> str | None:
    """Why the configured version cannot be reached from the recorded one, before anything runs:
    a downgrade, a jump of more than one minor, or no built node image of it to upgrade from."""
    current = recorded(state_dir)
    if current is None or current == version:
        return None
    if why := upgrade_refusal(current, version):
        return why
    if not bundle_path(version).is_dir():
        return (
            f"kubernetes.version {version}: the cluster runs {current} and the node image of"
            f" {version} is not built ({bundle_path(version)} is missing): run"
            " `make image`, which builds kubernetes.version"
        )
    return None
