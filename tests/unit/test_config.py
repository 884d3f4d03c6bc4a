"""cluster.yaml validation: defaults, overrides, and one clear message per bad input."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

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
    assert str(cfg.endpoint_address) == "10.30.0.10"


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


def test_endpoint_cp1_mode_points_at_cp1() -> None:
    cfg = parse_config({"kubernetes": {"control_plane_endpoint": {"mode": "cp1"}}}, "x")
    assert cfg.endpoint_address == cfg.addresses["cp1"]


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
        r"network: gateway 10\.31\.0\.1 is outside cidr 10\.30\.0\.0/24",
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
        "VIP on a node",
        {"kubernetes": {"control_plane_endpoint": {"vip": "10.30.0.12"}}},
        {},
        r"kubernetes\.control_plane_endpoint\.vip 10\.30\.0\.12 is already used by cp2's default",
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
        r"control_plane_endpoint\.mode: Input should be 'kube-vip' or 'cp1'",
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
