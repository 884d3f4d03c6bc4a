"""The lab's configuration: config/cluster.yaml plus stack overrides, validated by pydantic.

Every error names the field path, the bad value and what would be valid, so a typo stops the
program before a single resource is registered.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_CONFIG = Path("config/cluster.yaml")
UBUNTU_2404 = (
    "https://cloud-images.ubuntu.com/releases/noble/release/ubuntu-24.04-server-cloudimg-amd64.img"
)
DNS_LABEL = re.compile(r"^[a-z]([a-z0-9-]{0,30}[a-z0-9])?$")


class ConfigError(Exception):
    """A configuration that cannot be used; the message says where and how to fix it."""


class Strict(BaseModel):
    """Unknown keys are errors: a misspelt key must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Cluster(Strict):
    name: str = "k8s-lab"

    @field_validator("name")
    @classmethod
    def _dns_label(cls, v: str) -> str:
        if not DNS_LABEL.match(v):
            raise ValueError("must be a DNS label: lowercase letters, digits and '-', 1-32 chars")
        return v


class Network(Strict):
    name: str = "k8s-lab"
    cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.30.0.0/24")
    gateway: ipaddress.IPv4Address | None = None
    domain: str = "lab.local"

    @model_validator(mode="after")
    def _gateway_in_cidr(self) -> Network:
        if self.gateway is not None and self.gateway not in self.cidr:
            raise ValueError(f"gateway {self.gateway} is outside cidr {self.cidr}")
        return self

    @property
    def gateway_address(self) -> ipaddress.IPv4Address:
        """The host's address on the lab bridge: the given gateway or the network's first host."""
        return self.gateway or self.cidr.network_address + 1


class Size(Strict):
    cpus: int = Field(2, ge=1, le=64)
    memory_mib: int = Field(2048, ge=1024, le=262144)
    disk_gib: int = Field(30, ge=10, le=2048)


class ControlPlane(Size):
    count: int = Field(3, ge=1, le=7)
    memory_mib: int = Field(4096, ge=2048, le=262144)

    @field_validator("count")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"{v} is even; use an odd number (1, 3, 5 or 7) so etcd keeps quorum")
        return v


class Workers(Size):
    count: int = Field(2, ge=0, le=50)


class NodeOverride(Strict):
    address: ipaddress.IPv4Address


class Image(Strict):
    source: str = UBUNTU_2404

    @field_validator("source")
    @classmethod
    def _url_or_file(cls, v: str) -> str:
        if "://" in v:
            if not v.startswith(("http://", "https://")):
                raise ValueError(
                    f"{v!r} is not an http(s) URL; give an http(s) URL or a local path"
                )
        elif not Path(v).is_file():
            raise ValueError(f"image file {v!r} does not exist; download it or give an http(s) URL")
        return v


class Endpoint(Strict):
    """Where kubeadm's controlPlaneEndpoint points: a kube-vip address, or simply cp1."""

    mode: Literal["kube-vip", "cp1"] = "kube-vip"
    vip: ipaddress.IPv4Address | None = None


class Kubernetes(Strict):
    enabled: bool = True
    version: str = "1.33.5"
    pod_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.244.0.0/16")
    service_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.96.0.0/12")
    cni: Literal["flannel", "none"] = "flannel"
    control_plane_endpoint: Endpoint = Endpoint()

    @field_validator("version")
    @classmethod
    def _semver(cls, v: str) -> str:
        if not re.fullmatch(r"1\.(2[89]|3\d)\.\d+", v):
            raise ValueError(f"{v!r} is not a Kubernetes version like 1.33.5 (1.28 or later)")
        return v

    @property
    def minor(self) -> str:
        return ".".join(self.version.split(".")[:2])


class Ssh(Strict):
    user: str = "lab"
    private_key: Path | None = None

    @field_validator("private_key")
    @classmethod
    def _exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"{str(v)!r} does not exist; give an existing key or leave it unset")
        return v


class Libvirt(Strict):
    uri: str = "qemu:///system"
    pool: str = "k8s-lab"
    pool_path: Path = Path("/var/lib/libvirt/images/k8s-lab")
    # host-passthrough is fastest; some nested-KVM hosts kill such guests (an MSR assertion in
    # qemu): "default" leaves the CPU model to libvirt.
    cpu_mode: Literal["host-passthrough", "host-model", "default"] = "host-passthrough"


class Tuning(Strict):
    """How long to wait and how often to retry: the join's budget and backoff, and the gate's
    rules. The join defaults are generous: a learner on a slow host needs minutes to catch up."""

    join_max_wait_seconds: int = Field(1200, ge=1)
    cp_join_retry_attempts: int = Field(8, ge=1, le=100)
    cp_join_retry_sleep_seconds: float = Field(20, ge=0)
    cp_join_retry_max_sleep_seconds: float = Field(120, ge=0)
    cp_join_retry_max_total_seconds: int = Field(2400, ge=1)
    cp_stabilize_timeout_seconds: int = Field(900, ge=1)
    gate_consecutive_polls: int = Field(3, ge=1)
    gate_poll_interval_seconds: float = Field(2, gt=0)
    gate_min_window_seconds: float = Field(10, ge=0)
    gate_max_applied_lag: int = Field(50, ge=0)

    @model_validator(mode="after")
    def _sleep_bounds(self) -> Tuning:
        if self.cp_join_retry_max_sleep_seconds < self.cp_join_retry_sleep_seconds:
            raise ValueError(
                f"cp_join_retry_max_sleep_seconds ({self.cp_join_retry_max_sleep_seconds}) is below"
                f" cp_join_retry_sleep_seconds ({self.cp_join_retry_sleep_seconds}); raise it"
            )
        return self


class LabConfig(Strict):
    cluster: Cluster = Cluster()
    network: Network = Network()
    control_plane: ControlPlane = ControlPlane()
    workers: Workers = Workers()
    nodes: dict[str, NodeOverride] = {}
    image: Image = Image()
    kubernetes: Kubernetes = Kubernetes()
    ssh: Ssh = Ssh()
    libvirt: Libvirt = Libvirt()
    tuning: Tuning = Tuning()
    state_dir: Path = Path(".lab")

    @model_validator(mode="after")
    def _addresses_fit(self) -> LabConfig:
        names = self.control_plane_names + self.worker_names
        for name in self.nodes:
            if name not in names:
                raise ValueError(f"nodes.{name}: no such node; this config has {', '.join(names)}")
        net, taken = self.network.cidr, {self.network.gateway_address: "network.gateway"}
        hosts = (net.network_address, net.broadcast_address)
        claims = [
            (f"nodes.{n}.address" if n in self.nodes else f"{n}'s default address", a)
            for n, a in self.addresses.items()
        ]
        if self.kubernetes.control_plane_endpoint.mode == "kube-vip":
            claims.append(("kubernetes.control_plane_endpoint.vip", self.endpoint_address))
        for what, addr in claims:
            if addr not in net or addr in hosts:
                raise ValueError(
                    f"{what} {addr} is not a host address of network.cidr {net};"
                    " give an address inside it or a larger cidr"
                )
            if addr in taken:
                raise ValueError(f"{what} {addr} is already used by {taken[addr]}")
            taken[addr] = what
        return self

    @model_validator(mode="after")
    def _cidrs_apart(self) -> LabConfig:
        net, k8s = self.network.cidr, self.kubernetes
        for field, other in (("pod_cidr", k8s.pod_cidr), ("service_cidr", k8s.service_cidr)):
            if other.overlaps(net):
                raise ValueError(
                    f"kubernetes.{field} {other} overlaps network.cidr {net}; pick a range apart"
                )
        if k8s.pod_cidr.overlaps(k8s.service_cidr):
            raise ValueError(
                f"kubernetes.pod_cidr {k8s.pod_cidr} overlaps service_cidr {k8s.service_cidr}"
            )
        return self

    @property
    def control_plane_names(self) -> list[str]:
        return [f"cp{i}" for i in range(1, self.control_plane.count + 1)]

    @property
    def worker_names(self) -> list[str]:
        return [f"worker{i}" for i in range(1, self.workers.count + 1)]

    @property
    def addresses(self) -> dict[str, ipaddress.IPv4Address]:
        """Static addresses: cpN at .10+N, workerN at .20+N, or as given per node."""
        base = self.network.cidr.network_address
        default = {n: base + 10 + i for i, n in enumerate(self.control_plane_names, 1)}
        default |= {n: base + 20 + i for i, n in enumerate(self.worker_names, 1)}
        return {n: self.nodes[n].address if n in self.nodes else a for n, a in default.items()}

    @property
    def endpoint_address(self) -> ipaddress.IPv4Address:
        """controlPlaneEndpoint's address: the kube-vip VIP (default .10) or cp1's address."""
        ep = self.kubernetes.control_plane_endpoint
        if ep.mode == "cp1":
            return self.addresses["cp1"]
        return ep.vip or self.network.cidr.network_address + 10

    @property
    def ssh_key_path(self) -> Path:
        """The SSH private key: the given one, or one the lab generates under the state folder."""
        return self.ssh.private_key or self.state_dir / "ssh" / "id_ed25519"


# Stack config keys (`pulumi config set lab:<key> <value>`) and the cluster.yaml path each sets.
OVERRIDES: dict[str, tuple[str, ...]] = {
    "control_planes": ("control_plane", "count"),
    "workers": ("workers", "count"),
    "cp_cpus": ("control_plane", "cpus"),
    "cp_memory_mib": ("control_plane", "memory_mib"),
    "cp_disk_gib": ("control_plane", "disk_gib"),
    "worker_cpus": ("workers", "cpus"),
    "worker_memory_mib": ("workers", "memory_mib"),
    "worker_disk_gib": ("workers", "disk_gib"),
    "kubernetes": ("kubernetes", "enabled"),
    "image": ("image", "source"),
    "libvirt_uri": ("libvirt", "uri"),
    "cpu_mode": ("libvirt", "cpu_mode"),
}


def apply_overrides(raw: dict[str, Any], overrides: dict[str, str]) -> dict[str, Any]:
    """Return cluster.yaml's data with stack overrides set at their paths (validated later)."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for key, value in overrides.items():
        if key not in OVERRIDES:
            raise ConfigError(
                f"stack config lab:{key}: unknown key; known keys: {', '.join(sorted(OVERRIDES))}"
            )
        section, field = OVERRIDES[key]
        target = merged.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{section}: must be a mapping to set lab:{key}")
        target[field] = value
    return merged


def _read_yaml(path: Path, what: str, fix: str) -> Any:
    """Parsed YAML, or a ConfigError with the file, line and column of the problem."""
    try:
        return yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {what} ({e.strerror}); {fix}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {e.problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None


def stack_overrides(stack: str, project_dir: Path = Path(".")) -> dict[str, str]:
    """The `lab:*` keys of Pulumi.<stack>.yaml, read as the Pulumi program reads them, so a
    `lab` command run by hand with --stack sees the same cluster as `pulumi up`."""
    path = project_dir / f"Pulumi.{stack}.yaml"
    data = _read_yaml(path, "stack file", "check --stack") or {}
    values = (data.get("config") if isinstance(data, dict) else None) or {}
    found = {k.removeprefix("lab:"): str(v) for k, v in values.items() if k.startswith("lab:")}
    found.pop("config", None)
    if "libvirt:uri" in values:
        found["libvirt_uri"] = str(values["libvirt:uri"])
    return found


def describe(error: ValidationError, source: str, overrides: dict[str, str] | None = None) -> str:
    """One line per problem: source, field path, what is wrong, the value given."""
    by_path = {OVERRIDES[k]: k for k in overrides or {} if k in OVERRIDES}
    lines = []
    for e in error.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling (see README, Configuration)"
        got = e.get("input")
        shown = "" if isinstance(got, dict) or e["type"] == "missing" else f" (got {got!r})"
        path = ".".join(str(p) for p in e["loc"])
        key = by_path.get(tuple(str(p) for p in e["loc"]))
        origin = f" [set by stack config lab:{key}]" if key else ""
        lines.append(f"{source}: {path + ': ' if path else ''}{msg}{shown}{origin}")
    return "\n".join(lines)


def parse_config(raw: Any, source: str, overrides: dict[str, str] | None = None) -> LabConfig:
    """Validate already-parsed YAML data (plus overrides) into a LabConfig, or raise ConfigError."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, not {raw!r}")
    try:
        return LabConfig.model_validate(apply_overrides(raw, overrides or {}))
    except ValidationError as e:
        raise ConfigError(describe(e, source, overrides)) from None


def load_config(path: Path = DEFAULT_CONFIG, overrides: dict[str, str] | None = None) -> LabConfig:
    """Read and validate cluster.yaml; relative paths in it are relative to the working dir."""
    return parse_config(_read_yaml(path, "config", "pass --config PATH"), str(path), overrides)
