"""`lab status`'s verdict and screen, from what it read (lab.ops.status)."""

from __future__ import annotations

from lab.ops.status import LabStatus, MemberRow, NodeRow, render
from lab.ops.verify import Check

NODES = [
    NodeRow("cp1", "control-plane", "10.30.0.11", "running", True, "v1.37.2"),
    NodeRow("worker1", "worker", "10.30.0.21", "running", True, "v1.37.2"),
]
MEMBERS = [MemberRow("cp1", "8e9e05c52164694d", "voter", True, 4, 0, "")]


def test_a_running_lab_whose_checks_pass_is_healthy_on_one_screen() -> None:
    status = LabStatus(True, NODES, MEMBERS, "cp1", [Check("nodes Ready", True, "2 Ready")])
    screen = render(status, "k8s-lab")
    assert status.healthy and status.problems == []
    assert "cp1       control-plane  10.30.0.11     running     yes    v1.37.2" in screen
    assert "cp1       8e9e05c52164694d  voter    yes     4     0" in screen
    assert "VIP on cp1" in screen and screen.endswith("lab k8s-lab: healthy")
    assert status.to_dict()["etcd"][0]["leader"] is True


def test_a_stopped_machine_or_a_failed_check_is_named_in_the_verdict() -> None:
    stopped = [NODES[0], NodeRow("worker1", "worker", "10.30.0.21", "shut off", None, "-")]
    failing = [Check("nodes Ready", False, "not Ready: worker1")]
    status = LabStatus(True, stopped, MEMBERS, "cp1", failing)
    assert not status.healthy
    assert status.problems == ["machines: worker1 shut off", "nodes Ready: not Ready: worker1"]
    assert render(status, "lab").endswith(
        "lab lab: NOT healthy: machines: worker1 shut off; nodes Ready: not Ready: worker1"
    )
    # libvirt not answering from here is no problem of the lab's: the other checks decide
    unknown = [
        NodeRow(n.name, n.role, n.address, "unknown (no virsh here)", True, "-") for n in NODES
    ]
    assert LabStatus(True, unknown, MEMBERS, None, []).healthy


def test_a_lab_that_is_not_up_says_what_to_run() -> None:
    missing = [NodeRow(n.name, n.role, n.address, "missing", None, "-") for n in NODES]
    status = LabStatus(False, missing, [], None, [])
    assert not status.healthy
    assert render(status, "k8s-lab") == "lab k8s-lab: not up (every machine missing): run `make up`"
