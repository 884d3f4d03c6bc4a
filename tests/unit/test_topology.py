"""Nodes and the join plan, from the config alone."""

from __future__ import annotations

import pytest

from lab.config import ConfigError, parse_config
from lab.topology import build_topology, join_plan


def plan(**counts: int) -> list[tuple[str, tuple[str, ...]]]:
    cfg = parse_config(
        {
            "control_plane": {"count": counts.get("cps", 3)},
            "workers": {"count": counts.get("workers", 2)},
        },
        "x",
    )
    return [(s.name, s.after) for s in join_plan(build_topology(cfg))]


def test_default_plan_serialises_control_planes_and_parallelises_workers() -> None:
    assert plan() == [
        ("cp1-init", ()),
        ("cp1-gate", ("cp1-init",)),
        ("cp2-join", ("cp1-gate",)),
        ("cp2-gate", ("cp2-join",)),
        ("cp3-join", ("cp2-gate",)),
        ("cp3-gate", ("cp3-join",)),
        ("worker1-join", ("cp3-gate",)),
        ("worker2-join", ("cp3-gate",)),
        ("verify", ("worker1-join", "worker2-join")),
    ]


def test_single_control_plane_and_no_workers() -> None:
    assert plan(cps=1, workers=0) == [
        ("cp1-init", ()),
        ("cp1-gate", ("cp1-init",)),
        ("verify", ("cp1-gate",)),
    ]


def test_gates_count_voters_and_joins_name_their_node() -> None:
    cfg = parse_config({"control_plane": {"count": 5}}, "x")
    steps = {s.name: s for s in join_plan(build_topology(cfg))}
    assert [steps[f"cp{i}-gate"].voters for i in range(1, 6)] == [1, 2, 3, 4, 5]
    assert steps["cp4-join"].lab_args == ("join", "cp4")
    assert steps["cp4-gate"].lab_args == ("gate", "--voters", "4")
    assert steps["cp1-init"].lab_args == ("init",)


def test_nodes_have_stable_macs_and_sizes() -> None:
    topo = build_topology(parse_config({"workers": {"cpus": 4}}, "x"))
    assert topo.node("cp1").mac == "52:54:00:1e:00:0b"
    assert topo.node("worker1").cpus == 4 and topo.node("cp1").cpus == 2
    assert [n.name for n in topo.control_planes] == ["cp1", "cp2", "cp3"]


def test_unknown_node_names_the_known_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown node 'cp9'; this config has cp1, cp2, cp3, worker1, worker2"
    ):
        build_topology(parse_config({}, "x")).node("cp9")
