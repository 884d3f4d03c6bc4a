"""The whole join chain run by the real Pulumi engine, with the plugins built from source.

The machines are libvirt domains on an empty disk (no OS boots), as in test_engine.py; the nodes
the chain talks to are the integration harness's (tests/integration/harness.py): network
namespaces with real sshd, real etcd with TLS and the kubeadm stand-in. The config is the
harness's, so every node's address is a harness node, and Pulumi runs inside the harness's lab
host namespace: every step is a real local.Command running `.venv/bin/lab` (cp1-init is
`lab init`), and the kubeconfig a real remote.Command over SSH with the pinned host key.

The cases run in order on one stack, each starting from where the one before left the cluster.
Each asserts on etcd's member list and on Pulumi's own record (its event log, state, outputs).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab.config import load_config
from lab.topology import chain_plan
from tests.integration.harness import Harness

from .conftest import Libvirtd, Stack

NODES = ("cp1", "cp2", "cp3", "worker1")
CHAIN_TYPES = ("command:local:Command", "command:remote:Command")


@dataclass
class Chain:
    harness: Harness
    stack: Stack
    libvirtd: Libvirtd
    tmp: Path
    runs: int = 0

    def up(self, *args: str, check: bool = True) -> tuple[subprocess.CompletedProcess[str], Events]:
        """`pulumi up` in the lab host's namespace; returns its output and its event log."""
        self.runs += 1
        log = self.tmp / f"events-{self.runs}.jsonl"
        out = self.stack.pulumi(
            "up", "--yes", "--skip-preview", "--event-log", str(log), *args, check=check
        )
        return out, Events.read(log)

    def start_up(self, *args: str) -> tuple[subprocess.Popen[str], Path]:
        """`pulumi up` in the background (to interrupt it); the process is the CLI itself."""
        self.runs += 1
        log = self.tmp / f"events-{self.runs}.jsonl"
        argv = [*self.stack.argv(), "up", "--yes", "--skip-preview", "--event-log", str(log)]
        proc = subprocess.Popen(
            [*argv, *args],
            cwd=self.stack.cwd,
            env=self.stack.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        return proc, log

    def resources(self) -> dict[str, dict[str, Any]]:
        """The stack's state: resource name -> its state entry."""
        state = json.loads(self.stack.pulumi("stack", "export").stdout)
        return {r["urn"].rsplit("::", 1)[-1]: r for r in state["deployment"].get("resources") or []}

    def urn(self, name: str) -> str:
        return str(self.resources()[name]["urn"])

    def member_ids(self) -> dict[str, str]:
        members = self.harness.members()
        names = [m.get("name", "") for m in members]
        assert len(names) == len(set(names)), f"duplicate members: {members}"
        return {m.get("name", ""): str(m["ID"]) for m in members}

    def assert_voters(self, *names: str) -> None:
        assert self.harness.voters() == sorted(names)
        assert self.harness.learners() == []
        self.member_ids()  # no duplicate member


@dataclass
class Events:
    """Pulumi's event log: (sequence, phase "pre" | "done" | "failed", op, resource name)."""

    rows: list[tuple[int, str, str, str]]

    @classmethod
    def read(cls, path: Path) -> Events:
        rows = []
        for line in path.read_text().splitlines() if path.exists() else []:
            event = json.loads(line)
            for key, phase in (
                ("resourcePreEvent", "pre"),
                ("resOutputsEvent", "done"),
                ("resOpFailedEvent", "failed"),
            ):
                if key in event:
                    md = event[key]["metadata"]
                    rows.append((event["sequence"], phase, md["op"], md["urn"].rsplit("::", 1)[-1]))
        return cls(rows)

    def seq(self, phase: str, name: str, ops: tuple[str, ...]) -> int:
        found = [s for s, p, op, n in self.rows if p == phase and n == name and op in ops]
        assert found, f"no {phase} {ops} event for {name}: {self.rows}"
        return found[0]

    def ran(self, ops: tuple[str, ...]) -> list[str]:
        """Resources whose `ops` completed, in the order they completed."""
        return [n for s, p, op, n in sorted(self.rows) if p == "done" and op in ops]

    def touched(self) -> set[str]:
        return {n for _, _, op, n in self.rows if op not in ("same", "read")}


CREATE = ("create", "create-replacement")
DELETE = ("delete", "delete-replaced")


@pytest.fixture(scope="module")
def chain(libvirtd: Libvirtd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    tmp = tmp_path_factory.mktemp("chain")
    image = tmp / "image.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(image), "64M"], check=True)
    with Harness(tmp / "harness", NODES) as harness:
        # The harness's config, with libvirt objects of the test's own in the test's temp dir.
        cluster = yaml.safe_load(harness.config_path.read_text())
        cluster["libvirt"] = {"pool": harness.run_id, "pool_path": str(tmp / "pool")}
        cluster["network"]["name"] = harness.run_id
        cluster["cluster"]["name"] = harness.run_id
        harness.config_path.write_text(yaml.safe_dump(cluster, sort_keys=False))
        stack = Stack.create(
            "chain",
            {
                "lab:config": str(harness.config_path),
                "lab:image": str(image),
                # Nothing boots, so no KVM: a host whose KVM misbehaves cannot stall the tier.
                "lab:domain_type": "qemu",
                "libvirt:uri": libvirtd.uri,
            },
            netns=harness.host.ns,
        )
        try:
            yield Chain(harness, stack, libvirtd, tmp)
        finally:
            stack.pulumi("destroy", "--yes", "--skip-preview", check=False)
            stack.remove()


def test_1_up_runs_every_step_in_plan_order(chain: Chain) -> None:
    _, events = chain.up()
    cfg = load_config(chain.harness.config_path)
    plan = chain_plan(cfg)  # the upgrade's steps too: no-ops on nodes made at the version
    for step in plan:
        started = events.seq("pre", step.name, CREATE)
        for before in step.after:
            assert events.seq("done", before, CREATE) < started, (before, step.name)
        if step.makes_machine:
            domain = f"{step.node}-domain"
            assert events.seq("done", domain, CREATE) < started, step.name
            for before in step.boot_after:  # a worker boots once the control planes are in
                assert events.seq("done", before, CREATE) < events.seq("pre", domain, CREATE)
    chain.assert_voters("cp1", "cp2", "cp3")

    outputs = json.loads(chain.stack.pulumi("stack", "output", "--json").stdout)
    assert outputs["join_order"] == [s.name for s in plan]
    assert outputs["kubeconfig"] == "[secret]"
    shown = chain.stack.pulumi("stack", "output", "kubeconfig", "--show-secrets").stdout
    assert "kind: Config" in shown
    assert "kind: Config" not in chain.stack.pulumi("stack", "export").stdout  # encrypted


def test_2_a_second_up_changes_nothing(chain: Chain) -> None:
    _, events = chain.up("--expect-no-changes")
    assert events.touched() == set(), events.rows
    chain.assert_voters("cp1", "cp2", "cp3")


def set_workers_in_the_config_file(chain: Chain, count: int) -> None:
    cluster = yaml.safe_load(chain.harness.config_path.read_text())
    cluster["workers"]["count"] = count
    chain.harness.config_path.write_text(yaml.safe_dump(cluster, sort_keys=False))


def test_3_scale_down_by_stack_config_and_config_file_leaves_newest_first(chain: Chain) -> None:
    chain.stack.config({"lab:control_planes": "1"})
    set_workers_in_the_config_file(chain, 0)
    out, events = chain.up()
    leaves = [n for n in events.ran(DELETE) if n.endswith("-join")]
    assert leaves == ["worker1-join", "cp3-join", "cp2-join"], events.rows
    for node in ("worker1", "cp3", "cp2"):  # the member left before its machine went
        assert events.seq("done", f"{node}-join", DELETE) < events.seq(
            "done", f"{node}-domain", DELETE
        )
    assert "removed etcd member" in out.stdout
    chain.assert_voters("cp1")
    names = chain.resources().keys()
    assert not [n for n in names if n.startswith(("cp2", "cp3", "worker1"))]
    assert chain.libvirtd.virsh("list", "--all", "--name").split() == [
        f"{chain.harness.run_id}-cp1"
    ]


def test_4_a_join_that_keeps_failing_stops_the_chain_and_leaves_etcd_as_it_was(
    chain: Chain,
) -> None:
    chain.harness.nodes["cp2"].block_port(2380)
    chain.stack.config({"lab:control_planes": "3"})
    set_workers_in_the_config_file(chain, 1)
    out, events = chain.up(check=False)
    assert out.returncode != 0
    assert "cp2 did not join after" in out.stdout and "recommendation: network" in out.stdout
    # The program, stopped by the engine after the failed step, prints no traceback (__main__).
    assert "Traceback" not in out.stdout + out.stderr
    assert events.seq("failed", "cp2-join", CREATE)
    names = chain.resources().keys()
    assert "cp2-join" not in names and "cp2-gate" not in names and "cp3-join" not in names
    chain.assert_voters("cp1")

    chain.harness.nodes["cp2"].clear_faults()
    out, events = chain.up()
    joined = [n for n in events.ran(CREATE) if n.endswith(("-join", "-gate")) and "-up" not in n]
    assert joined == ["cp2-join", "cp2-gate", "cp3-join", "cp3-gate", "worker1-join"]
    chain.assert_voters("cp1", "cp2", "cp3")


def test_5_a_replaced_machine_leaves_then_joins_again_behind_the_gate(chain: Chain) -> None:
    before = chain.member_ids()
    out, events = chain.up("--replace", chain.urn("cp2-domain"))
    left = events.seq("done", "cp2-join", DELETE)
    assert left < events.seq("done", "cp2-domain", CREATE)
    assert events.seq("done", "cp2-domain", CREATE) < events.seq("pre", "cp2-join", CREATE)
    assert "gate on the 2 current voter(s)" in out.stdout
    chain.assert_voters("cp1", "cp2", "cp3")
    after = chain.member_ids()
    assert after["cp2"] != before["cp2"] and after["cp3"] == before["cp3"]


def interrupt_join(chain: Chain, node: str, sig: signal.Signals) -> str:
    """Replace `node`'s machine, and send `sig` to the CLI once its join runs."""
    proc, log = chain.start_up("--replace", chain.urn(f"{node}-domain"))
    deadline = time.monotonic() + 300
    while not any(
        p == "pre" and n == f"{node}-join" and op in CREATE for _, p, op, n in Events.read(log).rows
    ):
        assert proc.poll() is None, f"pulumi up ended first:\n{proc.stdout and proc.stdout.read()}"
        assert time.monotonic() < deadline, "the join never started"
        time.sleep(0.2)
    time.sleep(1.0)  # into `lab join`: past preflight, in reset/cleanup or the gate
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=600)
    return output


def test_6_interrupted_up_sigint_then_up_finishes(chain: Chain) -> None:
    output = interrupt_join(chain, "cp3", signal.SIGINT)
    print(output)
    chain.up()
    chain.assert_voters("cp1", "cp2", "cp3")
    assert {"cp3-join", "cp3-gate", "verify"} <= chain.resources().keys()


def test_7_killed_up_cancel_refresh_then_up_finishes(chain: Chain) -> None:
    output = interrupt_join(chain, "cp2", signal.SIGKILL)
    print(output)
    # What a user does after a killed `pulumi up` (README): remove the dead run's lock, clear
    # its pending create, up again. Its `lab join cp2` may still be running: the membership
    # lock makes the new one wait for it.
    chain.stack.pulumi("cancel", "--yes")
    chain.stack.pulumi("refresh", "--yes", "--skip-preview", "--clear-pending-creates", timeout=300)
    chain.up()
    chain.assert_voters("cp1", "cp2", "cp3")
    assert {"cp2-join", "cp2-gate", "cp3-join"} <= chain.resources().keys()


def test_8_destroy_leaves_newest_first_and_nothing_behind(chain: Chain) -> None:
    log = chain.tmp / "events-destroy.jsonl"
    chain.stack.pulumi("destroy", "--yes", "--skip-preview", "--event-log", str(log))
    leaves = [n for n in Events.read(log).ran(DELETE) if n.endswith("-join")]
    assert leaves == ["worker1-join", "cp3-join", "cp2-join"]
    chain.assert_voters("cp1")  # quorum kept all the way: cp1 is never removed by a join's delete
    assert chain.resources() == {}
    for kind in ("list", "net-list", "pool-list"):
        assert chain.libvirtd.virsh(kind, "--all", "--name").split() == []
