"""The `lab` command: every step of the join chain, runnable by hand with the same result.

Exit codes: 0 success, 1 the condition did not hold, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from lab.config import DEFAULT_CONFIG, ConfigError, LabConfig, load_config, stack_overrides
from lab.topology import build_topology, join_plan

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def cmd_plan(cfg: LabConfig, args: argparse.Namespace) -> int:
    """Print the join order from the config alone: no libvirt, no Pulumi engine."""
    topo = build_topology(cfg)
    steps = join_plan(topo)
    if args.format == "json":
        nodes = [
            {"name": n.name, "role": n.role, "address": str(n.address), "mac": n.mac}
            for n in topo.nodes
        ]
        plan = [
            {"step": s.name, "kind": s.kind, "after": list(s.after), "node": s.node,
             "command": ["lab", *s.lab_args] if s.lab_args else None}
            for s in steps
        ]
        print(json.dumps({"nodes": nodes, "steps": plan}, indent=2))
    elif args.format == "mermaid":
        print("flowchart TD")
        for n in topo.nodes:
            print(f'  {n.name}-machine["{n.name} machine<br/>{n.address}"]')
        for s in steps:
            print(f'  {s.name}["{s.name}"]')
            for before in s.after:
                print(f"  {before} --> {s.name}")
            if s.node:
                print(f"  {s.node}-machine --> {s.name}")
    else:
        for i, s in enumerate(steps, 1):
            what = " ".join(("lab", *s.lab_args)) if s.lab_args else f"kubeadm init on {s.node}"
            after = [*s.after, *([f"{s.node} machine"] if s.node else [])]
            print(f"{i:2}. {s.name:<16} {what:<28} after: {', '.join(after)}")
    return EXIT_OK


Command = Callable[[LabConfig, argparse.Namespace], int]


def parser() -> argparse.ArgumentParser:
    """One subcommand per operation; each takes --config (default config/cluster.yaml)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="cluster.yaml to read")
    common.add_argument(
        "--stack", help="also apply the lab:* overrides of Pulumi.<STACK>.yaml, as pulumi up does"
    )
    p = argparse.ArgumentParser(prog="lab", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    plan = sub.add_parser("plan", parents=[common], help="print the join order and its chain")
    plan.add_argument("--format", choices=["text", "mermaid", "json"], default="text")
    plan.set_defaults(func=cmd_plan)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        overrides = stack_overrides(args.stack) if args.stack else None
        cfg = load_config(args.config, overrides)
        func: Command = args.func
        return func(cfg, args)
    except ConfigError as e:
        print(f"lab: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
