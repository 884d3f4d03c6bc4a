"""The lab's configuration: config/cluster.yaml plus stack overrides, validated by pydantic.

Every error names the field path, the bad value and what would be valid, so a typo stops the
program before a single resource is registered.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from lab import releases

DEFAULT_CONFIG = Path("config/cluster.yaml")
DNS_LABEL = re.compile(r"^[a-z]([a-z0-9-]{0,30}[a-z0-9])?$")
DNS_NAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
LIBVIRT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,49}$")
LINUX_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
NODE_CIDR_PREFIX = 24  # kube-controller-manager gives each node a /24 of the pod CIDR
MAX_SERVICE_PREFIX = 12  # kube-apiserver refuses an IPv4 service range larger than a /12
API_PORT = 6443  # every kube-apiserver's own port
VIP_HOST = 10  # the default VIP: the network's .10 (control planes are .11 on, workers .21 on)


def _expand_home(value: Any) -> Any:
    """`~` in a path is the user's home, as everywhere else."""
    return Path(value).expanduser() if isinstance(value, str | Path) else value


UserPath = Annotated[Path, BeforeValidator(_expand_home)]


def _matches(pattern: re.Pattern[str], what: str) -> Any:
    """A field validator: the value must match `pattern`, which `what` describes."""

    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"{value!r} is not valid: use {what}")
        return value

    return check


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


LIBVIRT_NAME_RULE = "1-50 letters, digits, '-', '_' or '.', starting with a letter or digit"


class Network(Strict):
    name: str = "k8s-lab"
    cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.30.0.0/24")
    gateway: ipaddress.IPv4Address | None = None
    domain: str = "lab.local"

    _name = field_validator("name")(_matches(LIBVIRT_NAME, LIBVIRT_NAME_RULE))
    _domain = field_validator("domain")(
        _matches(DNS_NAME, "a DNS name: lowercase labels of letters, digits and '-', dot-separated")
    )

    @field_validator("gateway")
    @classmethod
    def _first_host(
        cls, v: ipaddress.IPv4Address | None, info: ValidationInfo
    ) -> ipaddress.IPv4Address | None:
        """libvirt's NAT network always gives the host the first address of the cidr."""
        cidr = info.data.get("cidr")
        if v is None or cidr is None or v == cidr.network_address + 1:
            return v
        if v not in cidr:
            why = f"is outside cidr {cidr}"
        elif v in (cidr.network_address, cidr.broadcast_address):
            kind = "network" if v == cidr.network_address else "broadcast"
            why = f"is the {kind} address of cidr {cidr}"
        else:
            why = "cannot be honoured: libvirt gives the host the first address of the cidr"
        raise ValueError(f"{v} {why}; use {cidr.network_address + 1} or leave it unset")

    @property
    def gateway_address(self) -> ipaddress.IPv4Address:
        """The host's address on the lab bridge: the network's first host, as libvirt sets it."""
        return self.cidr.network_address + 1


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
    """The node disk image; by default the one `make image` builds for kubernetes.version."""

    source: str | None = None

    @field_validator("source")
    @classmethod
    def _url_or_file(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if "://" in v:
            if not v.startswith(("http://", "https://")):
                raise ValueError(
                    f"{v!r} is not an http(s) URL; give an http(s) URL or a local path"
                )
            return v
        v = str(Path(v).expanduser())
        if not Path(v).is_file():
            raise ValueError(f"image file {v!r} does not exist; build it (make image) or fix it")
        return v


class Endpoint(Strict):
    """Where kubeadm's controlPlaneEndpoint points. `vip` (the default): a virtual address that
    keepalived (VRRP) keeps on a healthy control plane, where haproxy on `port` spreads the
    connections over every API server; it works offline, from Debian's packages in the node
    image. `cp1`: cp1's API server itself, a single point of failure. The endpoint is fixed at
    `kubeadm init`, so the default does not depend on the number of control planes: a lab begun
    with one can grow to three. `vip` defaults to the network's .10."""

    mode: Literal["vip", "cp1"] = "vip"
    vip: ipaddress.IPv4Address | None = None
    port: int = Field(8443, ge=1, le=65535)

    @field_validator("port")
    @classmethod
    def _not_the_api_servers(cls, v: int) -> int:
        if v == API_PORT:
            raise ValueError(f"{v} is the API servers' own port; haproxy needs another, e.g. 8443")
        return v


class Kubernetes(Strict):
    enabled: bool = True
    version: str = Field(default_factory=releases.newest)
    pod_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.244.0.0/16")
    service_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.96.0.0/12")
    cni: Literal["flannel", "none"] = "flannel"
    control_plane_endpoint: Endpoint = Endpoint()
    # An upgrade drains and upgrades this many workers at a time (control planes: always one).
    upgrade_workers_at_once: int = Field(1, ge=1, le=50)

    @field_validator("pod_cidr")
    @classmethod
    def _node_subnets_fit(cls, v: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
        if v.prefixlen > NODE_CIDR_PREFIX:
            raise ValueError(
                f"{v} is smaller than the /{NODE_CIDR_PREFIX} kube-controller-manager gives each"
                " node; use a /16 (or at least a /23)"
            )
        return v

    @field_validator("service_cidr")
    @classmethod
    def _apiserver_accepts(cls, v: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
        if v.prefixlen < MAX_SERVICE_PREFIX:
            raise ValueError(
                f"{v} is larger than kube-apiserver accepts (a /{MAX_SERVICE_PREFIX} at most);"
                " use e.g. 10.96.0.0/12"
            )
        return v

    @field_validator("version")
    @classmethod
    def _semver(cls, v: str) -> str:
        if not re.fullmatch(r"1\.(2[89]|3\d)\.\d+", v):
            raise ValueError(f"{v!r} is not a Kubernetes version like 1.33.5 (1.28 or later)")
        return v


PRIVATE_KEY_HEADER = re.compile(rb"^-----BEGIN (OPENSSH |RSA |EC |DSA )?PRIVATE KEY-----")


class Ssh(Strict):
    user: str = "lab"
    private_key: UserPath | None = None

    _user = field_validator("user")(
        _matches(
            LINUX_USER,
            "a Linux user name: 1-32 of a-z, 0-9, '_', '-', not starting with a digit or '-'",
        )
    )

    @field_validator("private_key")
    @classmethod
    def _a_private_key(cls, v: Path | None) -> Path | None:
        if v is None:
            return v
        if not v.is_file():
            raise ValueError(f"{str(v)!r} does not exist; give an existing key or leave it unset")
        head = v.read_bytes()[:100]
        if head.startswith((b"ssh-", b"ecdsa-", b"sk-")):
            raise ValueError(f"{str(v)!r} is a public key; give the private key (without .pub)")
        if not PRIVATE_KEY_HEADER.match(head):
            raise ValueError(f"{str(v)!r} is not an SSH private key (no PRIVATE KEY header)")
        return v


class Libvirt(Strict):
    uri: str = "qemu:///system"
    pool: str = "k8s-lab"
    pool_path: UserPath = Path("/var/lib/libvirt/images/k8s-lab")
    # host-passthrough is fastest; some nested-KVM hosts kill such guests (an MSR assertion in
    # qemu): "default" leaves the CPU model to libvirt.
    cpu_mode: Literal["host-passthrough", "host-model", "default"] = "host-passthrough"
    # kvm, or qemu (software emulation) where KVM cannot run a Linux guest; auto probes once.
    domain_type: Literal["auto", "kvm", "qemu"] = "auto"

    _pool = field_validator("pool")(_matches(LIBVIRT_NAME, LIBVIRT_NAME_RULE))


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
    # None: from the host (lab.ops.common.Session.gate_window and poll_interval).
    gate_poll_interval_seconds: float | None = Field(None, gt=0)
    gate_min_window_seconds: float | None = Field(None, ge=0)
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
    state_dir: UserPath = Path(".lab")

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
        if self.serves_vip:
            claims.insert(0, ("kubernetes.control_plane_endpoint.vip", self.endpoint_address))
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
    def _image_builds_version(self) -> LabConfig:
        version, built = self.kubernetes.version, releases.releases()
        if self.image.source is None and version not in built:
            raise ValueError(
                f"kubernetes.version {version}: the lab's node image builds {', '.join(built)}"
                f" (image/versions.tsv); set one of them, or give image.source an image that"
                f" has {version}"
            )
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
        nodes = self.control_plane.count + self.workers.count
        room = 2 ** (NODE_CIDR_PREFIX - k8s.pod_cidr.prefixlen)
        if room < nodes:
            raise ValueError(
                f"kubernetes.pod_cidr {k8s.pod_cidr} has room for {room} node /{NODE_CIDR_PREFIX}s"
                f" but the config has {nodes} nodes; use a larger range such as 10.244.0.0/16"
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
    def serves_vip(self) -> bool:
        """The endpoint is a VIP that keepalived and haproxy on the control planes serve."""
        return self.kubernetes.control_plane_endpoint.mode == "vip"

    @property
    def endpoint_address(self) -> ipaddress.IPv4Address:
        """controlPlaneEndpoint's address: the VIP (by default the network's .10), or cp1's."""
        if not self.serves_vip:
            return self.addresses["cp1"]
        vip = self.kubernetes.control_plane_endpoint.vip
        return vip or self.network.cidr.network_address + VIP_HOST

    @property
    def endpoint_port(self) -> int:
        """haproxy's port in front of the API servers, or cp1's API server's own."""
        return self.kubernetes.control_plane_endpoint.port if self.serves_vip else API_PORT

    @property
    def image_source(self) -> str:
        """The node image: the configured one, or the lab's build for kubernetes.version."""
        return self.image.source or str(releases.image_path(self.kubernetes.version))

    @property
    def release(self) -> releases.Release | None:
        """What goes with kubernetes.version in the lab's image; None for a brought image of
        another version (kubeadm then runs its own defaults)."""
        return releases.releases().get(self.kubernetes.version)

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
    "kubernetes_version": ("kubernetes", "version"),
    "image": ("image", "source"),
    "libvirt_uri": ("libvirt", "uri"),
    "cpu_mode": ("libvirt", "cpu_mode"),
    "domain_type": ("libvirt", "domain_type"),
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


class _DuplicateKey(Exception):
    def __init__(self, key: object, first: int, again: int) -> None:
        super().__init__(key)
        self.key, self.first, self.again = key, first, again


class _UniqueKeyLoader(yaml.SafeLoader):
    """Refuses a key given twice in one mapping: YAML would keep only the last, silently."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str | int | float | bool | None):
                continue  # an unhashable key: SafeLoader's own error names it
            if key in seen:
                raise _DuplicateKey(key, seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _decode(path: Path, data: bytes) -> str:
    """The file's text, or a ConfigError saying where it is not UTF-8."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(f"{path}: saved as UTF-16; save it as UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError(
            f"{path}:{line}:{column}: not UTF-8 (byte 0x{data[e.start]:02x}); save it as UTF-8"
        ) from None


def _read_yaml(path: Path, what: str, fix: str) -> Any:
    """Parsed YAML, or a ConfigError with the file, line and column of the problem."""
    try:
        text = _decode(path, path.read_bytes())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {what} ({e.strerror}); {fix}") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except _DuplicateKey as e:
        raise ConfigError(
            f"{path}:{e.again}: duplicate key {e.key!r} (first on line {e.first}); YAML would"
            " keep only the last: remove one"
        ) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {e.problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None


def stack_overrides(stack: str, project_dir: Path = Path(".")) -> dict[str, str]:
    """The `lab:*` keys of Pulumi.<stack>.yaml, read as the Pulumi program reads them, so a
    `lab` command run by hand with --stack sees the same cluster as `pulumi up`."""
    values = _stack_values(stack, project_dir)
    found = {
        k.removeprefix("lab:"): v
        for k, v in values.items()
        if k.startswith("lab:") and k != "lab:config"
    }
    if "libvirt:uri" in values:
        found["libvirt_uri"] = values["libvirt:uri"]
    return found


def stack_config_path(stack: str, project_dir: Path = Path(".")) -> Path | None:
    """The stack's `lab:config` (the cluster.yaml its `pulumi up` reads), if it names one."""
    path = _stack_values(stack, project_dir).get("lab:config")
    return Path(path) if path else None


def _stack_values(stack: str, project_dir: Path) -> dict[str, str]:
    path = project_dir / f"Pulumi.{stack}.yaml"
    data = _read_yaml(path, "stack file", "check --stack") or {}
    values = (data.get("config") if isinstance(data, dict) else None) or {}
    return {str(k): str(v) for k, v in values.items()}


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
