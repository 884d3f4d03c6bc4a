"""The `lab` command line: `lab plan` from the config alone, in three formats, and exit 2 with
the reason on bad input (a bad config, an unknown node) before anything runs."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def lab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lab.cli", *args], cwd=REPO, capture_output=True, text=True
    )


def test_plan_prints_control_planes_in_order_with_their_gates() -> None:
    out = lab("plan")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    order = [line.split()[1] for line in lines]
    assert order[:6] == ["cp1-init", "cp1-gate", "cp2-join", "cp2-gate", "cp3-join", "cp3-gate"]
    assert "lab gate --voters 2" in lines[3] and "after: cp2-join" in lines[3]
    assert "(boots after" not in lines[2] and lines[6].endswith("(boots after cp3-gate)")


def test_plan_json_and_mermaid() -> None:
    data = json.loads(lab("plan", "--format", "json").stdout)
    assert [s["step"] for s in data["steps"]][:3] == ["cp1-init", "cp1-gate", "cp2-join"]
    assert data["steps"][2]["command"] == ["lab", "join", "cp2"]
    assert {
        "name": "cp2",
        "role": "control-plane",
        "address": "10.30.0.12",
        "mac": "52:54:00:1e:00:0c",
    } in data["nodes"]
    mermaid = lab("plan", "--format", "mermaid").stdout
    assert mermaid.startswith("flowchart TD")
    assert "  cp1-gate --> cp2-join" in mermaid and "  cp2-machine --> cp2-join" in mermaid


def test_plan_on_a_bad_config_exits_2_with_the_field_path(tmp_path: Path) -> None:
    bad = tmp_path / "cluster.yaml"
    bad.write_text("control_plane:\n  count: 4\n")
    out = lab("plan", "--config", str(bad))
    assert out.returncode == 2
    assert f"{bad}: control_plane.count: 4 is even" in out.stderr
    assert out.stdout == ""


def test_plan_applies_stack_overrides(tmp_path: Path) -> None:
    (tmp_path / "Pulumi.dev.yaml").write_text("config:\n  lab:workers: '0'\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lab.cli",
            "plan",
            "--config",
            str(REPO / "config/cluster.yaml"),
            "--stack",
            "dev",
            "--format",
            "json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    steps = [s["step"] for s in json.loads(out.stdout)["steps"]]
    joins = steps[: steps.index("verify") + 1]
    assert joins[-2:] == ["cp3-gate", "verify"]
    assert steps[-2:] == ["cp3-upgrade-gate", "upgrade-verify"]


def test_leave_refuses_an_unknown_node_or_half_an_identity_before_touching_anything() -> None:
    unknown = lab("leave", "cp9")
    assert unknown.returncode == 2
    assert "unknown node 'cp9'; this config has cp1, cp2, cp3, worker1, worker2" in unknown.stderr
    half = lab("leave", "cp9", "--address", "10.30.0.19")
    assert half.returncode == 2 and "give --address and --role together" in half.stderr
    bad = lab("leave", "cp9", "--address", "10.30.0.300", "--role", "control-plane")
    assert bad.returncode == 2 and "invalid IPv4Address value" in bad.stderr


def test_plan_with_kubernetes_off_has_no_chain(tmp_path: Path) -> None:
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text("kubernetes: {enabled: false}\n")
    out = lab("plan", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert out.stdout == "kubernetes.enabled is false: machines only, no join chain\n"
    assert json.loads(lab("plan", "--format", "json", "--config", str(cfg)).stdout)["steps"] == []


def test_a_stacks_lab_config_is_the_file_lab_reads_with_that_stack(tmp_path: Path) -> None:
    """`lab ... --stack S` reads the cluster.yaml S's `pulumi up` reads (lab:config)."""
    small = tmp_path / "small.yaml"
    small.write_text("control_plane: {count: 1}\nworkers: {count: 0}\n")
    (tmp_path / "Pulumi.small.yaml").write_text(f"config:\n  lab:config: {small}\n")
    out = subprocess.run(
        [sys.executable, "-m", "lab.cli", "plan", "--stack", "small", "--format", "json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    steps = [s["step"] for s in json.loads(out.stdout)["steps"]]
    assert steps[:3] == ["cp1-init", "cp1-gate", "verify"], out.stderr


def test_every_subcommands_help_explains_its_arguments_with_an_example() -> None:
    from lab.cli import parser

    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        assert command.description, name
        assert command.epilog and f"lab {name}" in command.epilog, name
        for action in command._actions:
            assert action.help, f"lab {name}: {action.dest} has no help"
