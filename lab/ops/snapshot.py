"""`lab snapshot`: the whole lab at one moment, and back to it.

Save pauses every machine, gives each a libvirt internal snapshot of its disks and memory, and
resumes them together: the guests continue where they were, so etcd's members agree with each
other after a restore as they did at the save (disks alone, taken one machine at a time, would
bring back members at different raft indexes). Restore pauses every machine, reverts each to the
snapshot paused, and resumes them together, then sets the guests' clocks to the host's (a guest's
clock resumes at the save's time) and waits for the gate and `lab verify`. An etcd snapshot (the
`etcdctl snapshot save` format) is kept beside the record, for `etcdutl snapshot restore` by hand.

The snapshots live in the machines' qcow2 disks; the lab keeps a record of each in
<state_dir>/snapshots/NAME/. A machine that Pulumi deletes takes every snapshot of the lab with it
(`lab snapshot delete --machine NODE`, the chain's delete), since a restore needs every machine.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from lab.config import ConfigError, LabConfig
from lab.ops.common import OpFailed, Session, columns
from lab.ops.gate import RECORD, gate
from lab.ops.node import wait_until_reachable
from lab.ops.status import machine_states
from lab.ops.verify import settled
from lab.topology import Node, machine_names

FOLDER = "snapshots"  # in the state folder: NAME/record.json and NAME/etcd.db
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
CLOCK_SLACK_SECONDS = 2.0  # a guest clock further from the host's than this is set
RESUMED_SSH_SECONDS = 20.0  # how long a reverted guest may take to answer SSH, times slowdown


@dataclass(frozen=True)
class Record:
    """What the lab knows of one snapshot."""

    name: str
    taken: str  # ISO 8601, UTC
    version: str  # kubernetes.version at the save
    machines: dict[str, str]  # node -> its libvirt domain
    members: dict[str, str]  # etcd member (node name) -> its ID, hex
    voters: int
    disk_bytes: int  # the machines' memory it holds in their disks (the disks' own blocks it
    # shares with the running machines, so they are not counted); the name kept so that records
    # saved before session 24, when it was the disks' growth, still load
    etcd_bytes: int
    seconds: float  # how long the save took, machines paused for most of it
    forced: bool

    @property
    def size(self) -> int:
        return self.disk_bytes + self.etcd_bytes


def folder(state_dir: Path, name: str = "") -> Path:
    return state_dir / FOLDER / name if name else state_dir / FOLDER


def read(path: Path) -> Record:
    try:
        return Record(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(
            f"{path}: not a snapshot record ({e}); `lab snapshot delete {path.parent.name}`"
        ) from None


def records(state_dir: Path) -> list[Record]:
    """Every snapshot's record, oldest first."""
    found = [read(p) for p in folder(state_dir).glob("*/record.json")]
    return sorted(found, key=lambda r: r.taken)


def load(state_dir: Path, name: str) -> Record:
    path = folder(state_dir, name) / "record.json"
    if not path.is_file():
        known = ", ".join(r.name for r in records(state_dir)) or "none"
        raise ConfigError(f"no snapshot {name!r} (snapshots: {known}; `lab snapshot list`)")
    return read(path)


async def host(*argv: str, missing: str) -> str:
    """A command on the lab host; its own last error line on failure."""
    if shutil.which(argv[0]) is None:
        raise OpFailed(f"{argv[0]} is missing: {missing}")
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        why = (err.decode().strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise OpFailed(f"{' '.join(argv)}: {why}")
    return out.decode()


async def virsh(cfg: LabConfig, *args: str) -> str:
    """virsh against the lab's libvirt."""
    return await host(
        "virsh",
        "-c",
        cfg.libvirt.uri,
        *args,
        missing="apt install libvirt-clients (`make up` does)",
    )


async def each(cfg: LabConfig, domains: list[str], *args: str) -> None:
    """`virsh ARGS DOMAIN` for every domain at once (pause or resume them together)."""
    await asyncio.gather(*(virsh(cfg, args[0], d, *args[1:]) for d in domains))


async def resume_paused(cfg: LabConfig, domains: list[str]) -> None:
    """Resume, together, those of the domains that are paused (all of them, unless a step
    before failed part way)."""
    states = machine_states(cfg.libvirt.uri, domains)
    await each(cfg, [d for d in domains if states[d] == "paused"], "resume")


async def saved_state_bytes(cfg: LabConfig, domain: str, name: str) -> int:
    """The memory the machine's snapshot NAME holds: `qemu-img info`'s vm-state-size of it in
    each of the machine's disks. Not the disks' growth: a save after a deleted snapshot reuses its
    freed clusters (HA run 23: the first save grew the disks 4652 MiB, the next ones 2 MiB)."""
    stats = (await virsh(cfg, "domstats", domain, "--block")).splitlines()
    total = 0
    for path in [v for k, _, v in (r.strip().partition("=") for r in stats) if k.endswith(".path")]:
        info = await host(
            "qemu-img",
            "info",
            "-U",
            "--output=json",
            path,
            missing="apt install qemu-utils (`make up` does)",
        )
        snapshots = json.loads(info).get("snapshots", [])
        total += sum(int(s["vm-state-size"]) for s in snapshots if s["name"] == name)
    return total


def running_or_refuse(cfg: LabConfig, machines: dict[str, str], what: str) -> None:
    states = machine_states(cfg.libvirt.uri, list(machines.values()))
    down = [f"{n} ({states[d]})" for n, d in machines.items() if states[d] != "running"]
    if down:
        raise OpFailed(
            f"{what} needs every machine running; not running: {', '.join(down)} (`pulumi up`"
            " makes and starts them; `lab status` shows them)"
        )


async def save(session: Session, name: str, *, force: bool = False) -> Record:
    cfg, say = session.cfg, session.say
    if not NAME.match(name):
        raise ConfigError(
            f"snapshot name {name!r}: use lower-case letters, digits, '.', '_' or '-' (e.g."
            " before-upgrade)"
        )
    where = folder(cfg.state_dir, name)
    if where.exists():
        raise ConfigError(
            f"snapshot {name!r} exists: `lab snapshot delete {name}` first, or choose another name"
        )
    machines = machine_names(cfg)
    running_or_refuse(cfg, machines, "a snapshot")
    voters = len(session.topo.control_planes)
    if not force:
        result = await gate(session, voters, 2 * session.gate_window + session.poll_interval)
        if not result.ok and {v.rule for v in result.violations} == {"window"}:
            # Stable when last asked, not yet for the window: the polls too slow to cover it (a
            # loaded emulated lab's; HA run 22: 2 polls in 22 s, every drill's save refused), or
            # a change just settled. Neither is a reason to refuse: wait for the gate as a join
            # would; still unstable by its timeout, refused.
            result = await gate(session, voters)
        if not result.ok:
            raise OpFailed(
                "etcd is not stable, so its members might not agree at any one moment: "
                + "; ".join(str(v) for v in result.violations)
                + " (wait for `lab gate` to pass, see `lab diagnose`, or save anyway with --force)"
            )
    snap = await session.snapshot()
    where.mkdir(parents=True)
    try:
        t0 = time.monotonic()
        etcd_bytes = await (await session.etcd()).save_snapshot(where / "etcd.db")
        domains = list(machines.values())
        say(None, f"snapshot {name}: pausing {len(domains)} machines")
        try:
            await each(cfg, domains, "suspend")
            await each(cfg, domains, "snapshot-create-as", name, "--description", f"lab {name}")
        finally:
            await resume_paused(cfg, domains)
        held = await asyncio.gather(*(saved_state_bytes(cfg, d, name) for d in domains))
        record = Record(
            name=name,
            taken=datetime.now(UTC).isoformat(timespec="seconds"),
            version=cfg.kubernetes.version,
            machines=machines,
            members=snap.member_ids,
            voters=len(snap.voters),
            disk_bytes=sum(held),
            etcd_bytes=etcd_bytes,
            seconds=round(time.monotonic() - t0, 1),
            forced=force,
        )
    except BaseException:
        await drop_from_machines(cfg, name, list(machines.values()))
        shutil.rmtree(where, ignore_errors=True)
        raise
    (where / "record.json").write_text(json.dumps(asdict(record), indent=2) + "\n")
    say(None, f"snapshot {name}: saved in {record.seconds:.1f}s ({human(record.size)})")
    return record


def refusal(cfg: LabConfig, record: Record) -> str | None:
    """Why this lab cannot go back to `record`, or None."""
    now = machine_names(cfg)
    if now != record.machines:
        added = sorted(set(now) - set(record.machines))
        removed = sorted(set(record.machines) - set(now))
        diff = (
            "; ".join(
                [f"the config adds {', '.join(added)}"] * bool(added)
                + [f"the config no longer has {', '.join(removed)}"] * bool(removed)
            )
            or "the machines' names differ"
        )
        return (
            f"snapshot {record.name} is of machines {', '.join(record.machines)}, and {diff}:"
            " a restore needs the same machines (set the config back, or delete the snapshot)"
        )
    if record.version != cfg.kubernetes.version:
        return (
            f"snapshot {record.name} is of Kubernetes v{record.version} and the config says"
            f" v{cfg.kubernetes.version}: set kubernetes.version back to {record.version} first"
        )
    return None


async def restore(session: Session, name: str) -> None:
    cfg, say = session.cfg, session.say
    record = load(cfg.state_dir, name)
    if why := refusal(cfg, record):
        raise ConfigError(why)
    domains = list(record.machines.values())
    running_or_refuse(cfg, record.machines, "a restore")
    for node, domain in record.machines.items():
        if name not in (await virsh(cfg, "snapshot-list", domain, "--name")).split():
            raise OpFailed(
                f"{node}'s machine {domain} has no snapshot {name} (made again since the save?):"
                f" `lab snapshot delete {name}`"
            )
    # The guests go back to before this process connected: its SSH and etcd connections would
    # be dead after the revert (closed now, while their peers still answer).
    await session.close()
    t0 = time.monotonic()
    say(None, f"snapshot {name}: pausing {len(domains)} machines, reverting each to {record.taken}")
    try:
        await each(cfg, domains, "suspend")
        await each(cfg, domains, "snapshot-revert", name, "--paused")
    finally:
        await resume_paused(cfg, domains)
    (cfg.state_dir / RECORD).unlink(missing_ok=True)  # etcd's last stable state is the save's
    await asyncio.gather(*(set_clock(session, n) for n in session.topo.nodes))
    if why := await settled(session, record.voters):
        raise OpFailed(f"snapshot {name}: restored, but {why} (`lab diagnose`)")
    members = (await session.snapshot()).member_ids
    if members != record.members:
        raise OpFailed(f"snapshot {name}: etcd's members are {members}, saved {record.members}")
    say(None, f"snapshot {name}: restored in {time.monotonic() - t0:.1f}s; etcd members as saved")


async def set_clock(session: Session, node: Node) -> None:
    """A reverted guest's clock is the save's: set it to the host's (certificates, leases and
    logs need the time) where it is off by more than the slack. Its SSH may not answer at once:
    qemu restarts for a revert, and the host's first ARP can go unanswered (EHOSTUNREACH, seen
    in the e2e tier)."""
    await wait_until_reachable(session, node, RESUMED_SSH_SECONDS * session.slowdown)
    shell = session.shell(node)
    guest = float((await shell.run("date +%s.%N", check=True)).stdout.strip())
    host = time.time()
    if abs(guest - host) > CLOCK_SLACK_SECONDS:
        await shell.run(f"date -u -s @{host:.3f} >/dev/null", check=True)
        session.say(node.name, f"clock was {host - guest:.0f}s behind: set to the host's")


async def drop_from_machines(cfg: LabConfig, name: str, domains: list[str]) -> None:
    """Delete snapshot NAME from each domain that has it. An absent domain or snapshot is fine:
    the machine or its snapshot is gone already, or going (`pulumi destroy` deletes every
    machine's snapshots at once, each the whole lab's)."""
    listed = set((await virsh(cfg, "list", "--all", "--name")).split())
    for domain in domains:
        if domain not in listed:
            continue
        try:
            await virsh(cfg, "snapshot-delete", domain, name)
        except OpFailed as e:
            if "not found" not in str(e) and "failed to get domain" not in str(e):
                raise


async def delete(cfg: LabConfig, names: list[str]) -> list[str]:
    """Delete the named snapshots from the machines and the record; returns their names."""
    for name in names:
        try:
            machines = list(load(cfg.state_dir, name).machines.values())
        except ConfigError:
            if not folder(cfg.state_dir, name).is_dir():
                raise
            machines = list(machine_names(cfg).values())  # its record is unreadable: the config's
        await drop_from_machines(cfg, name, machines)
        shutil.rmtree(folder(cfg.state_dir, name), ignore_errors=True)
    return names


def holding(state_dir: Path, node: str) -> list[str]:
    """The snapshots with NODE's machine in them."""
    return [r.name for r in records(state_dir) if node in r.machines]


def human(size: int) -> str:
    return f"{size / 2**20:.0f} MiB" if size >= 2**20 else f"{size / 2**10:.0f} KiB"


def render(items: list[Record]) -> str:
    if not items:
        return "no snapshots (lab snapshot save NAME)"
    rows = [("NAME", "TAKEN (UTC)", "VERSION", "MACHINES", "VOTERS", "SIZE", "SAVE")]
    rows += [
        (
            r.name + (" (forced)" if r.forced else ""),
            r.taken.replace("T", " ").removesuffix("+00:00"),
            r.version,
            ",".join(r.machines),
            str(r.voters),
            human(r.size),
            f"{r.seconds:.0f}s",
        )
        for r in items
    ]
    return "\n".join(columns(rows))
