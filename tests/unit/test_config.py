"""cluster.yaml validation: defaults, overrides, and one clear message per bad input."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab import cli, releases
from lab.config import ConfigError, LabConfig, load_config, parse_config, stack_overrides

REPO = Path(__file__).resolve().parents[2]


def leaves(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"tuning.gate_max_applied_lag": 50, ...}; `nodes` is one leaf (a map of node names)."""
    out = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path != "nodes":
            out |= leaves(value, path + ".")
        else:
            out[path] = value
    return out


def test_shipped_config_is_exactly_the_defaults() -> None:
    """One source of truth: the shipped file says what the model would do without it."""
    assert load_config(REPO / "config" / "cluster.yaml") == LabConfig()


def test_readme_table_documents_every_key_with_its_default() -> None:
    defaults = leaves(LabConfig().model_dump(mode="json"))
    readme = (REPO / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z_.]+)` \| (.*?) \| .*\|$", readme, re.MULTILINE))
    assert set(rows) == set(defaults)
    for key, cell in rows.items():
        if cell.startswith("`"):
            assert yaml.safe_load(cell.strip("`")) == defaults[key], key
        else:  # a description ("the first host (.1)") where the model computes the value
            assert defaults[key] in (None, {}), f"{key}: README {cell!r}, model {defaults[key]!r}"


def test_shipped_config_is_valid_and_matches_the_seed() -> None:
    cfg = load_config(REPO / "config" / "cluster.yaml")
    assert cfg.control_plane.count == 3
    assert {n: str(a) for n, a in cfg.addresses.items()} == {
        "cp1": "10.30.0.11",
        "cp2": "10.30.0.12",
        "cp3": "10.30.0.13",
        "worker1": "10.30.0.21",
        "worker2": "10.30.0.22",
    }
    t = cfg.tuning
    assert (t.join_max_wait_seconds, t.cp_join_retry_attempts, t.cp_join_retry_sleep_seconds) == (
        1200,
        8,
        20,
    )
    assert (
        t.cp_join_retry_max_sleep_seconds,
        t.cp_join_retry_max_total_seconds,
        t.cp_stabilize_timeout_seconds,
    ) == (120, 2400, 900)
    assert (str(cfg.endpoint_address), cfg.endpoint_port) == ("10.30.0.10", 8443)
    assert cfg.kubernetes.version == releases.newest() == "1.37.2"
    assert cfg.image_source == ".lab/images/k8s-node-v1.37.2.qcow2"


def test_empty_file_means_all_defaults() -> None:
    assert parse_config(None, "x").control_plane.count == 3


def test_stack_overrides_set_counts_and_sizes() -> None:
    cfg = parse_config({}, "x", {"workers": "5", "control_planes": "5", "cp_memory_mib": "8192"})
    assert cfg.worker_names == [f"worker{i}" for i in range(1, 6)]
    assert cfg.control_plane_names[-1] == "cp5"
    assert cfg.control_plane.memory_mib == 8192


def test_per_node_address() -> None:
    cfg = parse_config({"nodes": {"worker1": {"address": "10.30.0.99"}}}, "x")
    assert str(cfg.addresses["worker1"]) == "10.30.0.99"


def test_endpoint_is_the_vip_or_cp1_wherever_it_is() -> None:
    vip = parse_config({"kubernetes": {"control_plane_endpoint": {"vip": "10.30.0.99"}}}, "x")
    assert (str(vip.endpoint_address), vip.endpoint_port) == ("10.30.0.99", 8443)
    cp1 = parse_config(
        {
            "nodes": {"cp1": {"address": "10.30.0.61"}},
            "kubernetes": {"control_plane_endpoint": {"mode": "cp1"}},
        },
        "x",
    )
    assert (str(cp1.endpoint_address), cp1.endpoint_port) == ("10.30.0.61", 6443)
    # The VIP is kubeadm's endpoint only in mode vip: elsewhere .10 is free for a node.
    free = parse_config(
        {
            "nodes": {"worker1": {"address": "10.30.0.10"}},
            "kubernetes": {"control_plane_endpoint": {"mode": "cp1"}},
        },
        "x",
    )
    assert str(free.addresses["worker1"]) == "10.30.0.10"


def test_another_version_needs_an_image_that_has_it(tmp_path: Path) -> None:
    image = tmp_path / "node.qcow2"
    image.write_bytes(b"")
    cfg = parse_config({"kubernetes": {"version": "1.35.1"}, "image": {"source": str(image)}}, "x")
    assert cfg.image_source == str(image)


def test_stack_file_overrides(tmp_path: Path) -> None:
    (tmp_path / "Pulumi.dev.yaml").write_text(
        "config:\n  lab:workers: '3'\n  lab:config: other.yaml\n  libvirt:uri: qemu:///session\n"
    )
    assert stack_overrides("dev", tmp_path) == {"workers": "3", "libvirt_uri": "qemu:///session"}
    with pytest.raises(ConfigError, match=r"Pulumi\.nope\.yaml: cannot read"):
        stack_overrides("nope", tmp_path)


BAD: list[tuple[str, object, dict[str, str], str]] = [
    (
        "even CP count",
        {"control_plane": {"count": 2}},
        {},
        r"x: control_plane\.count: 2 is even; use an odd number .* \(got 2\)",
    ),
    (
        "too many CPs",
        {"control_plane": {"count": 9}},
        {},
        r"control_plane\.count: Input should be less than or equal to 7 \(got 9\)",
    ),
    (
        "zero CPs",
        {"control_plane": {"count": 0}},
        {},
        r"control_plane\.count: .*greater than or equal to 1",
    ),
    (
        "too many workers",
        {"workers": {"count": 51}},
        {},
        r"workers\.count: .*less than or equal to 50",
    ),
    (
        "cpus 0",
        {"workers": {"cpus": 0}},
        {},
        r"workers\.cpus: .*greater than or equal to 1 \(got 0\)",
    ),
    (
        "CP memory too small",
        {"control_plane": {"memory_mib": 1024}},
        {},
        r"control_plane\.memory_mib: .*greater than or equal to 2048",
    ),
    (
        "unknown top key",
        {"clustr": {}},
        {},
        r"x: clustr: unknown key; remove it or check its spelling",
    ),
    (
        "unknown nested key",
        {"tuning": {"cp_join_retry_atempts": 3}},
        {},
        r"tuning\.cp_join_retry_atempts: unknown key",
    ),
    ("bad CIDR", {"network": {"cidr": "10.30.0.0/33"}}, {}, r"network\.cidr: .*IPv4 network"),
    (
        "gateway outside",
        {"network": {"gateway": "10.31.0.1"}},
        {},
        r"network\.gateway: 10\.31\.0\.1 is outside cidr 10\.30\.0\.0/24; use 10\.30\.0\.1 or",
    ),
    (
        "gateway is the network address",
        {"network": {"gateway": "10.30.0.0"}},
        {},
        r"network\.gateway: 10\.30\.0\.0 is the network address of cidr 10\.30\.0\.0/24; use",
    ),
    (
        "gateway is the broadcast address",
        {"network": {"gateway": "10.30.0.255"}},
        {},
        r"network\.gateway: 10\.30\.0\.255 is the broadcast address of cidr",
    ),
    (
        "gateway libvirt cannot honour",
        {"network": {"gateway": "10.30.0.254"}},
        {},
        r"network\.gateway: 10\.30\.0\.254 cannot be honoured: libvirt gives the host the first"
        r" address of the cidr; use 10\.30\.0\.1 or leave it unset",
    ),
    (
        "pod CIDR smaller than a node's /24",
        {"kubernetes": {"pod_cidr": "10.244.0.0/25"}},
        {},
        r"kubernetes\.pod_cidr: 10\.244\.0\.0/25 is smaller than the /24 kube-controller-manager",
    ),
    (
        "pod CIDR without a /24 per node",
        {"kubernetes": {"pod_cidr": "10.244.0.0/23"}},
        {},
        r"x: kubernetes\.pod_cidr 10\.244\.0\.0/23 has room for 2 node /24s but the config has 5",
    ),
    (
        "service CIDR larger than kube-apiserver accepts",
        {"kubernetes": {"service_cidr": "10.64.0.0/10"}},
        {},
        r"kubernetes\.service_cidr: 10\.64\.0\.0/10 is larger than kube-apiserver accepts \(a /12",
    ),
    (
        "network name libvirt rejects",
        {"network": {"name": "lab net/1"}},
        {},
        r"network\.name: 'lab net/1' is not valid: use 1-50 letters, digits, '-', '_' or '\.'",
    ),
    (
        "pool name too long",
        {"libvirt": {"pool": "p" * 51}},
        {},
        r"libvirt\.pool: 'p{51}' is not valid: use 1-50 letters",
    ),
    (
        "domain DNS rejects",
        {"network": {"domain": "Lab_Local"}},
        {},
        r"network\.domain: 'Lab_Local' is not valid: use a DNS name",
    ),
    (
        "domain label too long",
        {"network": {"domain": "a" * 64 + ".local"}},
        {},
        r"network\.domain: 'a{64}\.local' is not valid: use a DNS name",
    ),
    (
        "cluster name too long",
        {"cluster": {"name": "k" * 33}},
        {},
        r"cluster\.name: must be a DNS label",
    ),
    (
        "ssh user the node cannot have",
        {"ssh": {"user": "Lab User"}},
        {},
        r"ssh\.user: 'Lab User' is not valid: use a Linux user name",
    ),
    (
        "ssh user starting with a digit",
        {"ssh": {"user": "1lab"}},
        {},
        r"ssh\.user: '1lab' is not valid",
    ),
    (
        "address outside CIDR",
        {"nodes": {"cp2": {"address": "192.168.1.5"}}},
        {},
        r"nodes\.cp2\.address 192\.168\.1\.5 is not a host address of network\.cidr 10\.30\.0",
    ),
    (
        "duplicate address",
        {"nodes": {"worker1": {"address": "10.30.0.11"}}},
        {},
        r"nodes\.worker1\.address 10\.30\.0\.11 is already used by cp1's default address",
    ),
    (
        "address on the gateway",
        {"nodes": {"cp1": {"address": "10.30.0.1"}}},
        {},
        r"nodes\.cp1\.address 10\.30\.0\.1 is already used by network\.gateway",
    ),
    (
        "unknown node",
        {"nodes": {"cp7": {"address": "10.30.0.50"}}},
        {},
        r"nodes\.cp7: no such node; this config has cp1, cp2, cp3, worker1, worker2",
    ),
    (
        "network too small",
        {"network": {"cidr": "10.30.0.0/28"}},
        {},
        r"worker1's default address 10\.30\.0\.21 is not a host address .* or a larger cidr",
    ),
    (
        "a node on the gateway",
        {"nodes": {"worker1": {"address": "10.30.0.1"}}},
        {},
        r"nodes\.worker1\.address 10\.30\.0\.1 is already used by network\.gateway",
    ),
    (
        "a version the node image does not build",
        {"kubernetes": {"version": "1.33.5"}},
        {},
        r"kubernetes\.version 1\.33\.5: the lab's node image builds 1\.37\.2, 1\.36\.3, .*"
        r"\(image/versions\.tsv\); set one of them, or give image\.source an image that has"
        r" 1\.33\.5",
    ),
    (
        "two nodes pinned to one address",
        {"nodes": {"worker1": {"address": "10.30.0.40"}, "worker2": {"address": "10.30.0.40"}}},
        {},
        r"nodes\.worker2\.address 10\.30\.0\.40 is already used by nodes\.worker1\.address",
    ),
    (
        "unknown CNI",
        {"kubernetes": {"cni": "weave"}},
        {},
        r"kubernetes\.cni: Input should be 'flannel' or 'none' \(got 'weave'\)",
    ),
    (
        "unknown endpoint mode",
        {"kubernetes": {"control_plane_endpoint": {"mode": "haproxy"}}},
        {},
        r"control_plane_endpoint\.mode: Input should be 'vip' or 'cp1' \(got 'haproxy'\)",
    ),
    (
        "a VIP outside the network",
        {"kubernetes": {"control_plane_endpoint": {"vip": "10.31.0.10"}}},
        {},
        r"kubernetes\.control_plane_endpoint\.vip 10\.31\.0\.10 is not a host address of"
        r" network\.cidr 10\.30\.0\.0/24; give an address inside it",
    ),
    (
        "a VIP that is a node's address",
        {"kubernetes": {"control_plane_endpoint": {"vip": "10.30.0.21"}}},
        {},
        r"worker1's default address 10\.30\.0\.21 is already used by"
        r" kubernetes\.control_plane_endpoint\.vip",
    ),
    (
        "haproxy on the API servers' own port",
        {"kubernetes": {"control_plane_endpoint": {"port": 6443}}},
        {},
        r"control_plane_endpoint\.port: 6443 is the API servers' own port; haproxy needs"
        r" another, e\.g\. 8443",
    ),
    (
        "bad k8s version",
        {"kubernetes": {"version": "1.33"}},
        {},
        r"kubernetes\.version: '1\.33' is not a Kubernetes version like 1\.33\.5",
    ),
    (
        "pod CIDR overlaps lab",
        {"kubernetes": {"pod_cidr": "10.30.0.0/16"}},
        {},
        r"kubernetes\.pod_cidr 10\.30\.0\.0/16 overlaps network\.cidr",
    ),
    (
        "missing image file",
        {"image": {"source": "/nonexistent/noble.img"}},
        {},
        r"image\.source: image file '/nonexistent/noble\.img' does not exist",
    ),
    (
        "ftp image",
        {"image": {"source": "ftp://x/y.img"}},
        {},
        r"image\.source: 'ftp://x/y\.img' is not an http",
    ),
    (
        "missing ssh key",
        {"ssh": {"private_key": "/nonexistent/id"}},
        {},
        r"ssh\.private_key: '/nonexistent/id' does not exist",
    ),
    (
        "backoff bounds",
        {"tuning": {"cp_join_retry_max_sleep_seconds": 5}},
        {},
        r"tuning: cp_join_retry_max_sleep_seconds \(5\.0\) is below cp_join_retry_sleep_seconds",
    ),
    (
        "negative budget",
        {"tuning": {"cp_join_retry_max_total_seconds": -1}},
        {},
        r"tuning\.cp_join_retry_max_total_seconds: .*greater than or equal to 1",
    ),
    (
        "bad cluster name",
        {"cluster": {"name": "My_Lab"}},
        {},
        r"cluster\.name: must be a DNS label",
    ),
    ("section not a mapping", {"workers": 3}, {}, r"workers: .*valid dictionary"),
    ("top level a list", ["cp1"], {}, r"x: the top level must be a mapping of sections"),
    (
        "override not a number",
        {},
        {"workers": "three"},
        r"workers\.count: .*valid integer.*\(got 'three'\)",
    ),
    (
        "unknown override",
        {},
        {"wokers": "3"},
        r"stack config lab:wokers: unknown key; known keys: ",
    ),
    (
        "even CP override",
        {},
        {"control_planes": "4"},
        r"control_plane\.count: 4 is even.* \[set by stack config lab:control_planes\]",
    ),
]


@pytest.mark.parametrize(
    ("raw", "overrides", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_config_names_the_field_and_the_fix(
    raw: object, overrides: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(raw, "x", overrides)


# Files that are refused before their values are read: (id, bytes, message).
BAD_FILES: list[tuple[str, bytes, str]] = [
    (
        "UTF-16",
        "workers:\n  count: 1\n".encode("utf-16"),
        r"cluster\.yaml: saved as UTF-16; save it as UTF-8",
    ),
    (
        "a Latin-1 byte in a comment",
        b"# caf\xe9\nworkers:\n  count: 1\n",
        r"cluster\.yaml:1:6: not UTF-8 \(byte 0xe9\); save it as UTF-8",
    ),
    (
        "duplicate top-level key",
        b"workers:\n  count: 1\ncluster:\n  name: a\nworkers:\n  count: 2\n",
        r"cluster\.yaml:5: duplicate key 'workers' \(first on line 1\); YAML would keep only the",
    ),
    (
        "duplicate key in a section",
        b"control_plane:\n  count: 3\n  cpus: 2\n  count: 1\n",
        r"cluster\.yaml:4: duplicate key 'count' \(first on line 2\)",
    ),
]


@pytest.mark.parametrize(
    ("data", "message"), [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES]
)
def test_bad_file_names_the_file_the_line_and_the_fix(
    tmp_path: Path, data: bytes, message: str
) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_ssh_key_must_be_a_private_key(tmp_path: Path) -> None:
    public = tmp_path / "id_ed25519.pub"
    public.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq lab@host\n")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a key\n")
    private = tmp_path / "id_ed25519"
    private.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn...\n")
    for path, message in (
        (public, r"ssh\.private_key: '.*id_ed25519\.pub' is a public key; give the private key"),
        (notes, r"ssh\.private_key: '.*notes\.txt' is not an SSH private key"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_config({"ssh": {"private_key": str(path)}}, "x")
    assert parse_config({"ssh": {"private_key": str(private)}}, "x").ssh.private_key == private


def test_tilde_is_the_home_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (tmp_path / "noble.img").write_bytes(b"qcow")
    cfg = parse_config(
        {
            "ssh": {"private_key": "~/.ssh/id_ed25519"},
            "image": {"source": "~/noble.img"},
            "libvirt": {"pool_path": "~/pool"},
            "state_dir": "~/state",
        },
        "x",
    )
    assert cfg.ssh_key_path == tmp_path / ".ssh" / "id_ed25519"
    assert cfg.image.source == str(tmp_path / "noble.img")
    assert cfg.libvirt.pool_path == tmp_path / "pool" and cfg.state_dir == tmp_path / "state"


@pytest.mark.parametrize("text", ["", "\n\n", "# only comments\n# cluster:\n#   name: x\n"])
def test_an_empty_file_or_only_comments_means_the_defaults(tmp_path: Path, text: str) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    assert load_config(path) == LabConfig()


def test_every_bad_input_exits_2_with_one_line_and_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lab plan` (the first thing a user runs) on each bad file of the tables above."""
    cases = [(name, yaml.safe_dump(raw).encode(), msg) for name, raw, o, msg in BAD if not o]
    for name, data, message in [*cases, *BAD_FILES]:
        path = tmp_path / "cluster.yaml"
        path.write_bytes(data)
        assert cli.main(["plan", "--config", str(path)]) == 2, name
        out, err = capsys.readouterr()
        assert out == "", name
        assert len(err.strip().splitlines()) == 1, f"{name}: {err}"
        assert re.search(message.removeprefix("x: "), err), f"{name}: {err}"


def test_bad_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "cluster.yaml"
    bad.write_text("control_plane:\n  count: [3\n")
    with pytest.raises(
        ConfigError, match=r"cluster\.yaml:3:1: not valid YAML: expected ',' or '\]'"
    ):
        load_config(bad)


def test_missing_file_says_to_pass_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read the config .*; pass --config PATH"):
        load_config(tmp_path / "nope.yaml")
