"""The HA cluster, real: 3 control planes behind the VIP + 1 worker, every guest emulated.

`make e2e-ha` runs it (over an hour on a 2-core host, so not in `make test`). The cases run in
order on one stack, each from where the one before left the cluster: up at the previous minor
release (LAB_UPGRADE_FROM); the VIP holder stopped and started again; the upgrade to the newest
release in place, one control plane at a time behind the gates, etcd sampled throughout; scale
3 -> 1; back to 3 (the new machines boot the lab's first image and are brought to the
cluster's release before they join), cp3's join against a partition on the etcd peer port that
never clears, then one cleared during the join; every drill of `lab rehearse`; a no-op up;
destroy. Every kubectl goes through
the VIP: admin.conf's server is the VIP, whichever control plane `lab` asks.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.ops.rehearse import SCENARIOS, Row, render
from tests.integration.harness import wait_until

from .cluster import ROOT, UPGRADE_TO, Cluster, cluster_on, upgrade_from
from .conftest import Libvirtd
from .upgrade import assert_upgraded_in_place, etcd_sampled, without_quorum, workload_serving

CIDR = "10.41.0.0/24"
CP3 = "10.41.0.13"  # the default address of cp3 on CIDR (lab.config: .10 + index)
ALL = {"cp1": True, "cp2": True, "cp3": True, "worker1": True}


@pytest.fixture(scope="module")
def ha(libvirtd: Libvirtd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("e2e")
    with cluster_on(libvirtd, tmp, CIDR, 3, 1, upgrade_from()) as cluster:
        yield cluster


def leaders(ha: Cluster) -> set[str]:
    """The leader each answering member names ("0": none); one value when etcd agrees."""
    return {s["leader"] for s in ha.diagnosis()["status"] if "leader" in s}


def vip_holders(ha: Cluster) -> list[str]:
    return [e["node"] for e in ha.diagnosis()["endpoint"] if e["holds_vip"]]


def test_1_up_brings_three_control_planes_and_a_worker_ready(ha: Cluster) -> None:
    ha.up_with_table("up")
    assert ha.ready_nodes() == ALL
    assert ha.voters_and_learners() == (["cp1", "cp2", "cp3"], [])
    report = json.loads(ha.lab("verify", "--json").stdout)
    assert report["ok"], report
    assert len(vip_holders(ha)) == 1
    assert len(leaders(ha)) == 1


def test_2_the_vip_moves_when_its_holder_stops_and_cp1_rejoins_its_member(ha: Cluster) -> None:
    [holder] = vip_holders(ha)
    began = time.monotonic()
    ha.libvirtd.virsh("destroy", f"{ha.name}-{holder}")
    wait_until(lambda: vip_holders(ha) not in ([holder], []), 300, "the VIP to move", 10)
    took = time.monotonic() - began
    print(f"\nVIP: {holder} stopped, {vip_holders(ha)} holds it after {took:.0f} s")
    # Through the VIP (admin.conf's server), from the next control plane's admin.conf.
    assert ha.ready_nodes().keys() == ALL.keys()
    agreed = leaders(ha)
    assert len(agreed) == 1 and "0" not in agreed, f"etcd lost its quorum: {agreed}"

    began = time.monotonic()
    ha.libvirtd.virsh("start", f"{ha.name}-{holder}")
    ha.lab("gate", "--voters", "3", "--timeout", "1200")
    print(
        f"{holder} started again: the gate holds (3 voters) after {time.monotonic() - began:.0f} s"
    )
    wait_until(lambda: ha.ready_nodes() == ALL, 600, "every node Ready", 10)
    assert ha.voters_and_learners() == (["cp1", "cp2", "cp3"], [])


def test_3_an_upgrade_goes_one_control_plane_at_a_time_and_etcd_keeps_its_quorum(
    ha: Cluster,
) -> None:
    """The same upgrade as the 1 + 1 cluster's; etcd sampled every 5 s throughout must keep a
    quorum answering and one leader; each control plane's step starts after the gate on the one
    before (the step table prints each node's time)."""
    addresses = [CIDR.rsplit(".", 1)[0] + f".{11 + i}" for i in range(3)]
    with (
        etcd_sampled(ha, addresses) as samples,
        workload_serving(ha, upgrade_from(), CIDR) as workload,
    ):
        assert_upgraded_in_place(ha, UPGRADE_TO, workload)
    without = without_quorum(samples)
    print(f"etcd samples: {len(samples)}; without a quorum or one leader: {without}")
    assert samples and not without
    began, ended = step_times(ha.tmp / "events-upgrade.jsonl")
    for before, after in (("cp1", "cp2"), ("cp2", "cp3")):
        assert began[f"{after}-upgrade"] >= ended[f"{before}-upgrade-gate"], (before, after)


def step_times(log: Path) -> tuple[dict[str, float], dict[str, float]]:
    """When each resource's step began and ended, from Pulumi's event log."""
    began: dict[str, float] = {}
    ended: dict[str, float] = {}
    for line in log.read_text().splitlines():
        event = json.loads(line)
        for kind, into in (("resourcePreEvent", began), ("resOutputsEvent", ended)):
            if kind in event:
                name = event[kind]["metadata"]["urn"].rsplit("::", 1)[-1]
                into.setdefault(name, event["timestamp"])
    return began, ended


def scale(ha: Cluster, control_planes: int, name: str) -> None:
    ha.stack.config({"lab:control_planes": str(control_planes)})
    ha.up_with_table(name)


def test_4_scale_down_to_one_control_plane(ha: Cluster) -> None:
    """Through `lab leave` (newest first: reset, member removed, node deleted) and the gates.
    The cases after it scale back to three: cp2 joins again, cp3 against a partition."""
    scale(ha, 1, "scale-1")
    assert ha.voters_and_learners() == (["cp1"], [])
    assert ha.ready_nodes() == {"cp1": True, "worker1": True}
    domains = ha.libvirtd.virsh("list", "--all", "--name").split()
    assert not {f"{ha.name}-cp2", f"{ha.name}-cp3"} & set(domains), domains


# The partition: cp1, the one voter before the scale back to three, drops etcd peer traffic
# from and to cp3's address, both ways; cp2, joined again first, is left open.
PARTITION = [
    ("INPUT", "-s", CP3, "-p", "tcp", "--dport", "2380", "-j", "DROP"),
    ("OUTPUT", "-d", CP3, "-p", "tcp", "--dport", "2380", "-j", "DROP"),
]


def partition(ha: Cluster, action: str) -> None:
    """`-I` (insert) or `-D` (delete) the partition's rules on cp1."""
    for chain, *rule in PARTITION:
        ha.on("cp1", "sudo", "iptables", action, chain, *rule)


def test_5_back_to_three_cp2_joins_and_a_partition_that_never_clears_fails_cp3(
    ha: Cluster,
) -> None:
    """cp2 joins again behind the gates; cp3's join fails after its attempts, naming the
    partition, and leaves etcd as it was before it (2 voters, no learner)."""
    partition(ha, "-I")
    ha.edit_config(tuning={"cp_join_retry_attempts": 2, "cp_join_retry_sleep_seconds": 10})
    ha.stack.config({"lab:control_planes": "3"})
    out = ha.up(ha.tmp / "events-partition.jsonl")
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert "cp3 did not join after 2 attempt(s)" in text, text
    assert "cp3 -> cp1:2380" in text and "blocked" in text, text
    assert "Traceback" not in text, text  # the program stopped by the engine exits quietly
    assert ha.voters_and_learners() == (["cp1", "cp2"], [])
    print("\n" + "\n".join(line for line in text.splitlines() if "cp3:" in line))


def test_6_a_partition_cleared_during_cp3_join_is_retried_to_three_voters(ha: Cluster) -> None:
    """The partition is still there; it is cleared once cp3's first attempt has failed."""
    ha.edit_config(tuning={"cp_join_retry_attempts": 8, "cp_join_retry_sleep_seconds": 20})
    log, output = ha.tmp / "events-cleared.jsonl", ha.tmp / "up-cleared.out"
    with output.open("w") as out:  # a file, not a pipe: nobody reads a pipe while this runs
        proc = subprocess.Popen(
            [*ha.stack.argv(), "up", "--yes", "--skip-preview", "--event-log", str(log)],
            cwd=ha.stack.cwd,
            env=ha.stack.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        failed = "cp3: attempt 1 failed"
        wait_until(
            lambda: failed in text_of(log) or proc.poll() is not None,
            ha.up_timeout,
            "cp3's first attempt to fail",
            5,
        )
        assert proc.poll() is None, output.read_text()
        partition(ha, "-D")
        assert proc.wait(timeout=ha.up_timeout) == 0, output.read_text()
    said = text_of(log)
    assert "cp3: joined on attempt" in said and "cp3: joined on attempt 1\n" not in said
    assert ha.voters_and_learners() == (["cp1", "cp2", "cp3"], [])
    wait_until(lambda: ha.ready_nodes() == ALL, 600, "every node Ready", 10)
    assert json.loads(ha.lab("verify", "--json").stdout)["ok"]


def text_of(log: Path) -> str:
    """The program output Pulumi recorded so far (each command's lines, as they came)."""
    if not log.exists():
        return ""
    lines = log.read_text().splitlines()
    return "".join(
        json.loads(line)["diagnosticEvent"]["message"]
        for line in lines
        if line.endswith("}") and '"diagnosticEvent"' in line
    )


def test_6b_every_drill_of_the_guide_is_diagnosed_and_recovered(ha: Cluster) -> None:
    """`lab rehearse`: all six drills on the real 3 + 1 (each between a snapshot's save and
    restore). What it says (each command, each save's and restore's time) goes to a file as it
    runs, and is printed after it with the table. LAB_DRILLS (names, space-separated) plays some
    of them: each restores its snapshot, so a host too slow for all six in one sitting (each
    control-plane join 30-40 min under emulation here, docs/ha-runs.md) can play them in two."""
    drills = os.environ.get("LAB_DRILLS", "").split() or list(SCENARIOS)
    assert set(drills) <= set(SCENARIOS), f"LAB_DRILLS: not drills: {set(drills) - set(SCENARIOS)}"
    said = ha.tmp / "rehearse.out"
    print(f"\nlab rehearse: its progress in {said}")
    began = time.monotonic()
    with said.open("w") as progress:
        out = subprocess.run(
            ha.lab_argv("rehearse", "--json", *drills),
            stdout=subprocess.PIPE,
            stderr=progress,
            text=True,
            timeout=4 * 3600,
            cwd=ROOT,
        )
    print(
        f"{said.read_text()}\nlab rehearse: {time.monotonic() - began:.0f} s, exit {out.returncode}"
    )
    assert out.stdout.strip(), f"lab rehearse printed no rows (exit {out.returncode}): {said}"
    rows = json.loads(out.stdout)
    print(render([Row(**r) for r in rows]))
    assert [r["scenario"] for r in rows] == drills
    assert all(r["ok"] for r in rows), rows
    assert json.loads(ha.lab("snapshot", "list", "--json").stdout) == []


def test_7_a_second_up_changes_nothing(ha: Cluster) -> None:
    ha.assert_second_up_changes_nothing()


def test_8_destroy_leaves_no_domain_volume_or_network(ha: Cluster) -> None:
    ha.assert_destroy_leaves_nothing()
