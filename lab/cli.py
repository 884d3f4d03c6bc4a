"""The `lab` command: every step of the join chain, runnable by hand with the same result.

Exit codes: 0 success, 1 the condition did not hold, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import shlex
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from lab import releases
from lab.config import (
    DEFAULT_CONFIG,
    ConfigError,
    LabConfig,
    load_config,
    stack_config_path,
    stack_overrides,
)
from lab.topology import Node, build_topology, chain_plan

if TYPE_CHECKING:
    from lab.ops.common import Session

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def cmd_plan(cfg: LabConfig, args: argparse.Namespace) -> int:
    """Print the join order from the config alone: no libvirt, no Pulumi engine."""
    if why := releases.change_refusal(cfg.state_dir, cfg.kubernetes.version):
        raise ConfigError(why)
    topo = build_topology(cfg)
    steps = chain_plan(cfg)
    if not steps and args.format == "text":
        print("kubernetes.enabled is false: machines only, no join chain")
    if args.format == "json":
        nodes = [
            {"name": n.name, "role": n.role, "address": str(n.address), "mac": n.mac}
            for n in topo.nodes
        ]
        plan = [
            {
                "step": s.name,
                "kind": s.kind,
                "after": list(s.after),
                "node": s.node,
                "boot_after": list(s.boot_after),
                "command": ["lab", *s.lab_args] if s.lab_args else None,
            }
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
            if s.makes_machine:
                print(f"  {s.node}-machine --> {s.name}")
            for before in s.boot_after:
                print(f"  {before} --> {s.node}-machine")
    else:
        for i, s in enumerate(steps, 1):
            what = " ".join(("lab", *s.lab_args))
            after = [*s.after, *([f"{s.node} machine"] if s.makes_machine else [])]
            boots = f" (boots after {', '.join(s.boot_after)})" if s.boot_after else ""
            print(f"{i:2}. {s.name:<16} {what:<28} after: {', '.join(after)}{boots}")
    return EXIT_OK


def cmd_preflight(cfg: LabConfig, args: argparse.Namespace) -> int:
    """Check this host before `pulumi up`: libvirt, the ISO tool, and KVM or emulation."""
    from lab.domain_type import choose
    from lab.preflight import IMAGE_BUILD_TIME, host_problems, image_missing

    print(f"preflight: {choose(cfg)}")
    problems = host_problems(cfg, image=not args.preview)
    for p in problems:
        print(f"lab: {p}", file=sys.stderr)
    if problems:
        return EXIT_FAILED
    if args.preview and (missing := image_missing(cfg)):
        print(
            f"preflight: libvirt and genisoimage are ready; the node image {missing} is not built"
            f" yet: a preview does not need it, `make up` builds it first ({IMAGE_BUILD_TIME})"
        )
    else:
        print("preflight: libvirt, the node image and genisoimage are ready")
    return EXIT_OK


Command = Callable[[LabConfig, argparse.Namespace], int]


# ----------------------------------------------------------------- the operations (lab.ops)
# Imported inside each command so `lab plan` stays free of gRPC and SSH.


def _operate(
    cfg: LabConfig,
    body: Callable[[Session], Awaitable[int]],
    *,
    json_out: bool = False,
    host_keys: dict[str, str] | None = None,
    changes_members: str | None = None,
    of: Node | None = None,
) -> int:
    """Run one operation: progress lines with elapsed time (on stderr with --json), and a failed
    condition, an unreachable node or an etcd error as exit 1 with one clear line. An operation
    that `changes_members` (its description) holds the membership lock while it runs, taken as a
    worker's when the node it changes (`of`) is one (lab.ops.common.membership_lock)."""
    from lab.etcd import EtcdError
    from lab.ops.common import OpFailed, Progress, Session, membership_lock
    from lab.ssh import SshError

    progress = Progress(sys.stderr if json_out else sys.stdout)

    async def go() -> int:
        async with Session(cfg, progress, host_keys=host_keys or {}) as session:
            return await body(session)

    try:
        if changes_members is None:
            return asyncio.run(go())
        worker = of.name if of is not None and not of.is_control_plane else None
        with membership_lock(cfg.state_dir, changes_members, progress, worker=worker):
            return asyncio.run(go())
    except (OpFailed, SshError, EtcdError) as e:
        print(f"lab: {e}", file=sys.stderr)
        return EXIT_FAILED


def cmd_gate(cfg: LabConfig, args: argparse.Namespace) -> int:
    from lab.ops.gate import gate

    async def body(session: Session) -> int:
        voters = args.voters or len(session.topo.control_planes)
        result = await gate(session, voters, args.timeout)
        if result.ok:
            return EXIT_OK
        print(f"gate failed after {result.elapsed:.1f}s ({result.polls} polls):", file=sys.stderr)
        for v in result.violations:
            print(f"  {v}", file=sys.stderr)
        return EXIT_FAILED

    return _operate(cfg, body)


def cmd_join(cfg: LabConfig, args: argparse.Namespace) -> int:
    from lab.ops.join import join

    node = build_topology(cfg).node(args.node)  # an unknown node is a usage error (exit 2)

    async def body(session: Session) -> int:
        await join(session, node.name)
        return EXIT_OK

    return _operate(cfg, body, changes_members=f"join {node.name}", of=node)


def cmd_cleanup(cfg: LabConfig, args: argparse.Namespace) -> int:
    from lab.ops.cleanup import cleanup_learners

    if args.node:
        build_topology(cfg).node(args.node)

    async def body(session: Session) -> int:
        await cleanup_learners(session, args.node, dry_run=args.dry_run)
        return EXIT_OK

    return _operate(cfg, body, changes_members=None if args.dry_run else "cleanup-learners")


def cmd_diagnose(cfg: LabConfig, args: argparse.Namespace) -> int:
    from lab.ops.diagnose import diagnose, render

    async def body(session: Session) -> int:
        report = await diagnose(session)
        print(json.dumps(report.to_dict(), indent=2) if args.json else render(report))
        return EXIT_OK

    return _operate(cfg, body, json_out=args.json)


def cmd_status(cfg: LabConfig, args: argparse.Namespace) -> int:
    from lab.ops.status import lab_status, render, to_json

    async def body(session: Session) -> int:
        status = await lab_status(session)
        print(to_json(status) if args.json else render(status, cfg.cluster.name))
        return EXIT_OK if status.healthy else EXIT_FAILED

    return _operate(cfg, body, json_out=args.json)


def cmd_verify(cfg: LabConfig, args: argparse.Namespace) -> int:
    from lab.ops.verify import verify

    async def body(session: Session) -> int:
        wait = session.cfg.tuning.cp_stabilize_timeout_seconds if args.wait else 0
        checks = await verify(session, wait)
        ok = all(c.ok for c in checks)
        if args.json:
            print(json.dumps({"ok": ok, "checks": [c.to_dict() for c in checks]}, indent=2))
        else:
            failed = ", ".join(c.name for c in checks if not c.ok)
            print("verify: ok" if ok else f"verify: FAILED: {failed}")
        return EXIT_OK if ok else EXIT_FAILED

    return _operate(cfg, body, json_out=args.json)


def leaving_node(cfg: LabConfig, args: argparse.Namespace) -> Node:
    """The node to remove: as the join's delete command recorded it (--address, --role), which
    works after the config dropped it; else the config's node of that name."""
    if args.address is None and args.role is None:
        return build_topology(cfg).node(args.node)
    if args.address is None or args.role is None:
        raise ConfigError("lab leave: give --address and --role together, or neither")
    return Node(args.node, args.role, args.address, cpus=0, memory_mib=0, disk_gib=0)


def cmd_leave(cfg: LabConfig, args: argparse.Namespace) -> int:
    from lab.ops.leave import leave

    node = leaving_node(cfg, args)
    host_keys = {node.name: args.host_key} if args.host_key else {}

    async def body(session: Session) -> int:
        await leave(session, node, force=args.force)
        return EXIT_OK

    return _operate(cfg, body, host_keys=host_keys, changes_members=f"leave {node.name}", of=node)


def cmd_init(cfg: LabConfig, args: argparse.Namespace) -> int:
    from lab.ops.init import init

    if args.forget:  # the chain's delete: the cluster is gone with its machines
        from lab.ops.gate import RECORD

        releases.record(cfg.state_dir, None)
        (cfg.state_dir / RECORD).unlink(missing_ok=True)
        return EXIT_OK

    async def body(session: Session) -> int:
        await init(session)
        releases.record(cfg.state_dir, cfg.kubernetes.version)
        return EXIT_OK

    return _operate(cfg, body, changes_members="init")


def cmd_upgrade(cfg: LabConfig, args: argparse.Namespace) -> int:
    from lab.ops.upgrade import upgrade

    node = build_topology(cfg).node(args.node)

    async def body(session: Session) -> int:
        await upgrade(session, node.name)
        return EXIT_OK

    return _operate(cfg, body, changes_members=f"upgrade {node.name}", of=node)


def cmd_snapshot(cfg: LabConfig, args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from lab.ops import snapshot as snaps

    if args.action == "list":
        items = snaps.records(cfg.state_dir)
        print(
            json.dumps([asdict(r) for r in items], indent=2) if args.json else snaps.render(items)
        )
        return EXIT_OK
    if args.force and args.action != "save":
        raise ConfigError("--force is for `lab snapshot save` only")
    if args.action == "delete":
        if len([x for x in (args.name, args.all, args.machine) if x]) != 1:
            raise ConfigError("lab snapshot delete: give one of NAME, --all or --machine NODE")
        if args.machine:
            chosen = snaps.holding(cfg.state_dir, args.machine)
        else:
            chosen = [r.name for r in snaps.records(cfg.state_dir)] if args.all else [args.name]

        async def drop(session: Session) -> int:
            for name in await snaps.delete(cfg, chosen):
                print(f"snapshot {name}: deleted")
            return EXIT_OK

        return _operate(cfg, drop)
    if not args.name:
        raise ConfigError(f"lab snapshot {args.action}: which snapshot? (lab snapshot list)")

    async def body(session: Session) -> int:
        if args.action == "save":
            await snaps.save(session, args.name, force=args.force)
        else:
            await snaps.restore(session, args.name)
        return EXIT_OK

    return _operate(cfg, body, changes_members=f"snapshot {args.action} {args.name}")


def cmd_rehearse(cfg: LabConfig, args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from lab.ops.rehearse import SCENARIOS, play, refusal, render

    if args.list:
        width = max(map(len, SCENARIOS))
        for s in SCENARIOS.values():
            print(f'{s.name:<{width}}  {s.what}  [guide: "{s.section}"]')
        return EXIT_OK
    unknown = [n for n in args.scenarios if n not in SCENARIOS]
    if unknown:
        raise ConfigError(
            f"no scenario {', '.join(unknown)} (scenarios: {', '.join(SCENARIOS)}; lab rehearse"
            " --list)"
        )
    chosen = [SCENARIOS[n] for n in args.scenarios or SCENARIOS]

    async def body(session: Session) -> int:
        refused = {s.name: why for s in chosen if (why := refusal(s, session))}
        if refused and args.scenarios:  # asked for by name: refuse before changing anything
            raise ConfigError("; ".join(refused.values()))
        rows = []
        for s in chosen:
            if s.name in refused:
                session.say(None, f"skipping {s.name}: {refused[s.name]}")
                continue
            session.say(None, f'rehearsing {s.name} (the guide\'s "{s.section}")')
            rows.append(await play(session, s, keep=args.keep))
        print(json.dumps([asdict(r) for r in rows], indent=2) if args.json else render(rows))
        return EXIT_OK if all(r.ok for r in rows) else EXIT_FAILED

    return _operate(cfg, body, json_out=args.json, changes_members="rehearse")


def cmd_version(cfg: LabConfig, args: argparse.Namespace) -> int:
    """The configured version, the cluster's, and the releases the image builds (and has built)."""
    version = cfg.kubernetes.version
    if args.short:
        print(version)
        return EXIT_OK
    built = [v for v in releases.releases() if releases.image_path(v).is_file()]
    print(f"kubernetes.version  {version} ({args.config})")
    print(f"cluster             {releases.recorded(cfg.state_dir) or 'none (not initialised)'}")
    print(f"images built        {', '.join(built) or 'none'} ({releases.IMAGES})")
    print(f"releases            {', '.join(releases.releases())} (image/versions.tsv)")
    if why := releases.change_refusal(cfg.state_dir, version):
        print(f"lab: {why}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def cmd_ssh(cfg: LabConfig, args: argparse.Namespace) -> int:
    """Run a command on a node as root, over SSH with its pinned host key; exit with its status."""
    node = build_topology(cfg).node(args.node)
    if not args.command:
        raise ConfigError(f"no command: lab ssh {args.node} -- CMD")
    return _run_on(cfg, node, shlex.join(args.command))


def cmd_kubectl(cfg: LabConfig, args: argparse.Namespace) -> int:
    """kubectl with the cluster's admin.conf on cp1 (another control plane when cp1 is down):
    this host needs no kubectl or kubeconfig."""
    from lab.ops.node import KUBECONFIG

    return _run_on(
        cfg,
        None,
        shlex.join(["kubectl", "--kubeconfig", KUBECONFIG, *args.kubectl_args, *args.command]),
    )


def _run_on(cfg: LabConfig, node: Node | None, command: str) -> int:
    """Run COMMAND on NODE (None: the admin node, lab.ops.node.admin_node); what is piped into
    `lab` (`lab kubectl apply -f - < x.yaml`) is its standard input, read whole first. A
    terminal is not read: the command gets an empty input."""
    from lab.ops.node import admin_node

    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()

    async def body(session: Session) -> int:
        target = node or await admin_node(session)
        status, out, err = await session.shell(target).run_bytes(command, input=stdin)
        sys.stdout.buffer.write(out)
        sys.stderr.buffer.write(err)
        return status

    return _operate(cfg, body)


def cmd_libvirtd(cfg: LabConfig, args: argparse.Namespace) -> int:
    """start: the host's libvirtd if it runs, else a private one; stop; exec CMD inside it."""
    import os

    from lab.libvirtd import LibvirtdError, for_lab
    from lab.preflight import libvirt_socket_problem

    daemon = for_lab(cfg.state_dir, cfg.cluster.name)
    try:
        if args.action == "start":
            if daemon.pid() is not None:
                print(f"libvirtd: the lab's private libvirtd runs (namespace {daemon.netns})")
            elif libvirt_socket_problem(cfg.libvirt.uri) is None:
                print(f"libvirtd: libvirt answers at {cfg.libvirt.uri}; the lab uses it")
            else:
                daemon.start()
                print(
                    f"libvirtd: this host runs no libvirtd, so the lab started its own in network"
                    f" namespace {daemon.netns} (state in {daemon.root}); `make down` stops it"
                )
        elif args.action == "stop":
            if daemon.pid() is None:
                print("libvirtd: the lab runs no libvirtd of its own")
            else:
                daemon.stop()
                print(f"libvirtd: the lab's private libvirtd is stopped ({daemon.netns} removed)")
        else:
            if not args.command:
                raise ConfigError("no command: lab libvirtd exec -- CMD")
            argv = args.command if daemon.pid() is None else daemon.command(args.command)
            os.execvp(argv[0], argv)
    except LibvirtdError as e:
        print(f"lab: {e}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


NODE_HELP = "a node of the config: cp1, cp2, ... or worker1, worker2, ..."


def _command(
    sub: Any, common: argparse.ArgumentParser, name: str, what: str, *examples: str
) -> argparse.ArgumentParser:
    """A subcommand whose --help says what it does and shows how it is typed."""
    epilog = "examples:\n" + "\n".join(f"  lab {e}" for e in examples) if examples else None
    return cast(
        argparse.ArgumentParser,
        sub.add_parser(
            name,
            parents=[common],
            help=what,
            description=what[0].upper() + what[1:] + ".",
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        ),
    )


def _add_operations(sub: Any, common: argparse.ArgumentParser) -> None:
    i = _command(sub, common, "init", "kubeadm init on cp1, then the CNI", "init --stack dev")
    i.add_argument(
        "--forget",
        action="store_true",
        help="forget the cluster's version and etcd's last stable state (pulumi destroy)",
    )
    i.set_defaults(func=cmd_init)
    u = _command(
        sub,
        common,
        "upgrade",
        "upgrade a node to kubernetes.version (cp1 first, then each control plane, workers)",
        "upgrade cp1      # kubeadm upgrade plan + apply, drain, kubelet, uncordon",
        "upgrade worker1  # drain, kubeadm upgrade node, kubelet, uncordon",
    )
    u.add_argument("node", metavar="NODE", help=f"{NODE_HELP}; a no-op if it is at the version")
    u.set_defaults(func=cmd_upgrade)
    g = _command(sub, common, "gate", "wait until etcd is stable with N voters", "gate --voters 3")
    g.add_argument(
        "--voters",
        type=_positive(int),
        help="expected voting members (default: every control plane of the config)",
    )
    g.add_argument(
        "--timeout",
        type=_positive(float),
        default=None,
        help="seconds (default tuning.cp_stabilize_timeout_seconds)",
    )
    g.set_defaults(func=cmd_gate)
    j = _command(
        sub, common, "join", "join a node, with cleanup, gate and retry", "join cp2", "join worker1"
    )
    j.add_argument("node", metavar="NODE", help=f"{NODE_HELP}; a no-op if it has joined")
    j.set_defaults(func=cmd_join)
    c = _command(
        sub,
        common,
        "cleanup-learners",
        "remove stale etcd learners (never a voter)",
        "cleanup-learners --dry-run",
    )
    c.add_argument("--node", default=None, help="also remove this node's own learner")
    c.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    c.set_defaults(func=cmd_cleanup)
    d = _command(
        sub,
        common,
        "diagnose",
        "connectivity matrix, etcd members and status, the VIP, and the likeliest root cause",
        "diagnose --stack dev",
    )
    d.add_argument("--json", action="store_true", help="the same as JSON, for scripts")
    d.set_defaults(func=cmd_diagnose)
    st = _command(
        sub,
        common,
        "status",
        "the lab on one screen: nodes, machines, etcd members, the VIP, healthy or not",
        "status --stack dev",
    )
    st.add_argument("--json", action="store_true", help="the same as JSON, for scripts")
    st.set_defaults(func=cmd_status)
    v = _command(
        sub,
        common,
        "verify",
        "every member started, no learner, the voters, every node Ready at the version, the VIP",
        "verify --wait",
    )
    v.add_argument("--json", action="store_true", help="the checks as JSON, for scripts")
    v.add_argument(
        "--wait",
        action="store_true",
        help="poll until every check passes (up to tuning.cp_stabilize_timeout_seconds)",
    )
    v.set_defaults(func=cmd_verify)
    lv = _command(
        sub,
        common,
        "leave",
        "remove a node, keeping etcd's quorum",
        "leave worker2",
        "leave cp3 --address 10.30.0.13 --role control-plane  # a node no longer in the config",
    )
    lv.add_argument("node", metavar="NODE", help=NODE_HELP)
    lv.add_argument("--force", action="store_true", help="remove even when quorum would break")
    lv.add_argument(
        "--address", type=ipaddress.IPv4Address, help="the node's address (default: the config's)"
    )
    lv.add_argument("--role", choices=["control-plane", "worker"], help="with --address")
    lv.add_argument("--host-key", help="its SSH host public key (default: the pinned one)")
    lv.set_defaults(func=cmd_leave)
    sh = _command(
        sub,
        common,
        "ssh",
        "run a command on a node as root, over SSH with its pinned host key",
        "ssh cp1 -- ctr -n k8s.io containers ls",
        "ssh worker1 -- journalctl -u kubelet -n 20",
    )
    sh.add_argument("node", metavar="NODE", help=f"{NODE_HELP}; the command follows --")
    sh.set_defaults(func=cmd_ssh)
    k = _command(
        sub,
        common,
        "kubectl",
        "kubectl on cp1 (or the next control plane up), as the cluster admin",
        "kubectl get nodes -o wide",
        "kubectl apply -f - < app.yaml",
    )
    k.set_defaults(func=cmd_kubectl)
    sn = _command(
        sub,
        common,
        "snapshot",
        "save the whole lab (every machine's disks and memory, paused together) and go back to it",
        "snapshot save before-upgrade",
        "snapshot restore before-upgrade   # every machine back, then the gate and verify",
        "snapshot list",
        "snapshot delete before-upgrade",
    )
    sn.add_argument(
        "action",
        choices=["save", "restore", "list", "delete"],
        help="save NAME, restore NAME, list, or delete NAME | --all | --machine NODE",
    )
    sn.add_argument("name", metavar="NAME", nargs="?", help="the snapshot (save, restore, delete)")
    sn.add_argument(
        "--force", action="store_true", help="save even while etcd is not stable (the gate's rules)"
    )
    sn.add_argument("--all", action="store_true", help="delete: every snapshot")
    sn.add_argument(
        "--machine", metavar="NODE", help="delete: every snapshot holding NODE's machine (destroy)"
    )
    sn.add_argument("--json", action="store_true", help="list: as JSON, for scripts")
    sn.set_defaults(func=cmd_snapshot)
    rh = _command(
        sub,
        common,
        "rehearse",
        "play the troubleshooting guide's failures on this lab: inject, diagnose, recover, restore",
        "rehearse --list",
        "rehearse peer-blocked not-ready",
        "rehearse            # every scenario this lab's size can play",
    )
    rh.add_argument("scenarios", metavar="SCENARIO", nargs="*", help="default: every scenario")
    rh.add_argument("--list", action="store_true", help="the scenarios, one line each")
    rh.add_argument("--json", action="store_true", help="the rows as JSON, for scripts")
    rh.add_argument(
        "--keep", action="store_true", help="leave the lab as a drill left it (no restore)"
    )
    rh.set_defaults(func=cmd_rehearse)
    ld = _command(
        sub,
        common,
        "libvirtd",
        "the lab's private libvirtd, where the host runs none",
        "libvirtd start",
        "libvirtd exec -- virsh list --all",
    )
    ld.add_argument("action", choices=["start", "stop", "exec"], help="exec: exec -- CMD")
    ld.set_defaults(func=cmd_libvirtd)


def parser() -> argparse.ArgumentParser:
    """One subcommand per operation; each takes --config (default config/cluster.yaml)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        help="cluster.yaml to read (default: the --stack's lab:config, else config/cluster.yaml)",
    )
    common.add_argument(
        "--stack", help="also apply the lab:* overrides of Pulumi.<STACK>.yaml, as pulumi up does"
    )
    p = argparse.ArgumentParser(
        prog="lab",
        description=__doc__,
        epilog="`lab COMMAND --help` explains a command's arguments, with examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    plan = _command(
        sub,
        common,
        "plan",
        "print the chain's steps in order, from the config alone",
        "plan",
        "plan --format mermaid",
    )
    plan.add_argument(
        "--format",
        choices=["text", "mermaid", "json"],
        default="text",
        help="text (default), a mermaid flowchart, or JSON for scripts",
    )
    plan.set_defaults(func=cmd_plan)
    pre = _command(sub, common, "preflight", "check this host before pulumi up", "preflight")
    pre.add_argument(
        "--preview", action="store_true", help="for pulumi preview: the node image may be missing"
    )
    pre.set_defaults(func=cmd_preflight)
    ver = _command(
        sub,
        common,
        "version",
        "the configured, running and built Kubernetes versions",
        "version",
    )
    ver.add_argument("--short", action="store_true", help="only kubernetes.version (for make)")
    ver.set_defaults(func=cmd_version)
    _add_operations(sub, common)
    return p


def main(argv: list[str] | None = None) -> int:
    from lab.libvirtd import for_lab, reenter

    argv = sys.argv[1:] if argv is None else argv
    # What follows `--` is a command to run (lab ssh, lab libvirtd exec), never lab's options.
    split = argv.index("--") if "--" in argv else len(argv)
    p = parser()
    args, unknown = p.parse_known_args(argv[:split])
    if unknown and args.func is not cmd_kubectl:
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.kubectl_args = unknown  # lab kubectl passes what lab does not know to kubectl
    args.command = argv[split + 1 :]
    try:
        overrides = stack_overrides(args.stack) if args.stack else None
        if args.config is None:  # as `pulumi up` of that stack reads it
            args.config = (stack_config_path(args.stack) if args.stack else None) or DEFAULT_CONFIG
        cfg = load_config(args.config, overrides)
        if args.func is not cmd_libvirtd:
            # Where the lab runs its own libvirtd, its guests answer only inside its namespace.
            reenter(for_lab(cfg.state_dir, cfg.cluster.name), argv)
        func: Command = args.func
        return func(cfg, args)
    except ConfigError as e:
        print(f"lab: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
