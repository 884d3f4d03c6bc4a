"""The decisions of the operations, fed with recorded etcd snapshots: the gate's rules, which
learners are stale, the quorum rule of leave, verify's checks and diagnose's recommendation."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from lab.etcd import Alarm, Member, Status
from lab.ops.cleanup import stale_learners
from lab.ops.common import Snapshot
from lab.ops.diagnose import NodeHealth, abnormal, pod_state, recommend
from lab.ops.endpoint import EndpointState
from lab.ops.gate import Evidence, check, stable_since
from lab.ops.leave import leave_refusal, quorum
from lab.ops.node import TcpPath
from lab.ops.verify import etcd_checks, node_checks, vip_check
from lab.topology import Node

IDS = {"cp1": 0x11, "cp2": 0x12, "cp3": 0x13}
NODES = {
    n: Node(n, "control-plane", ipaddress.IPv4Address(f"10.30.0.{i}"), 2, 4096, 30)
    for n, i in (("cp1", 11), ("cp2", 12), ("cp3", 13))
}


def member(name: str, learner: bool = False, started: bool = True) -> Member:
    addr = NODES[name].address
    return Member(
        IDS[name],
        name if started else "",
        (f"https://{addr}:2380",),
        (f"https://{addr}:2379",) if started else (),
        learner,
    )


def status(
    name: str,
    *,
    leader: str | None = "cp1",
    term: int = 2,
    applied: int = 100,
    learner: bool = False,
    errors: tuple[str, ...] = (),
) -> Status:
    return Status(
        f"{NODES[name].address}:2379",
        IDS[name],
        IDS[leader] if leader else 0,
        term,
        applied,
        applied,
        20480,
        learner,
        "3.5.1",
        errors,
    )


def snap(
    members: list[Member],
    statuses: dict[str, Status | str],
    *,
    alarms: list[Alarm] | None = None,
    read_error: str | None = None,
) -> Snapshot:
    by_id = {IDS[n]: s for n, s in statuses.items()}
    return Snapshot(members, by_id, alarms or [], read_error, nodes=tuple(NODES.values()))


def healthy3() -> Snapshot:
    return snap(
        [member("cp1"), member("cp2"), member("cp3")],
        {"cp1": status("cp1"), "cp2": status("cp2"), "cp3": status("cp3", applied=98)},
    )


# ------------------------------------------------------------------------ member identity


def test_snapshot_knows_whose_member_is_whose() -> None:
    s = snap(
        [member("cp1"), member("cp2"), member("cp3", learner=True, started=False)],
        {"cp1": status("cp1"), "cp2": status("cp2"), "cp3": "UNAVAILABLE"},
    )
    cp1, cp2, cp3 = NODES.values()
    assert s.members_of(cp2) == [s.members[1]]
    assert s.node_of(s.members[2]) == cp3  # never started: no name, found by its peer address
    assert s.label(s.members[2]) == "cp3 (not started)"
    assert [s.is_voter(n) for n in (cp1, cp2, cp3)] == [True, True, False]
    assert s.voting_nodes == [cp1, cp2]
    assert s.leader == s.members[0]
    stranger = Node("cp9", "control-plane", ipaddress.IPv4Address("10.30.0.19"), 2, 4096, 30)
    assert s.members_of(stranger) == [] and not s.is_voter(stranger)


# ------------------------------------------------------------------------------------ gate


def rules(violations: list) -> set[tuple[str, str]]:  # type: ignore[type-arg]
    return {(v.rule, v.member) for v in violations}


def test_gate_passes_a_healthy_cluster() -> None:
    assert check(healthy3(), 3, max_lag=50) == []


def test_gate_wants_exactly_the_expected_voters() -> None:
    assert rules(check(healthy3(), 2, max_lag=50)) == {("members", "cluster")}


def test_gate_rejects_a_learner_and_an_unstarted_member() -> None:
    s = snap(
        [member("cp1"), member("cp2", learner=True, started=False)],
        {"cp1": status("cp1"), "cp2": "status on 10.30.0.12:2379: UNAVAILABLE"},
    )
    found = rules(check(s, 1, max_lag=50))
    assert ("members", "cp2 (not started)") in found
    assert ("started", "cp2 (not started)") in found
    assert ("status", "cp2 (not started)") in found


def test_gate_rejects_disagreement_on_leader_and_term() -> None:
    s = snap(
        [member("cp1"), member("cp2"), member("cp3")],
        {
            "cp1": status("cp1", leader="cp1", term=3),
            "cp2": status("cp2", leader="cp2", term=4),
            "cp3": status("cp3", leader="cp1", term=3),
        },
    )
    assert {r for r, _ in rules(check(s, 3, max_lag=50))} == {"leader", "term"}


def test_gate_rejects_no_leader_lag_alarm_and_failed_read() -> None:
    s = snap(
        [member("cp1"), member("cp2"), member("cp3")],
        {
            "cp1": status("cp1", applied=500),
            "cp2": status("cp2", leader=None),
            "cp3": status("cp3", applied=100),
        },
        alarms=[Alarm(IDS["cp3"], "NOSPACE")],
        read_error="context deadline exceeded",
    )
    found = rules(check(s, 3, max_lag=50))
    assert {("leader", "cp2"), ("applied", "cp3"), ("alarm", "cp3"), ("read", "cluster")} <= found


def test_gate_reports_a_failed_member_list() -> None:
    s = Snapshot([], {}, [], "timed out", "member list on 10.30.0.11:2379: timed out")
    assert rules(check(s, 1, max_lag=50)) == {("members", "cluster")}


def test_stable_since_counts_from_the_first_poll_that_saw_the_same_members_leader_and_term(
    tmp_path: Path,
) -> None:
    """The gate's window may begin in an earlier gate: while members, leader and term stay (no
    election raises the term), the record keeps its time; anything else starts it again."""
    seen = Evidence.of(healthy3())
    assert seen == Evidence((0x11, 0x12, 0x13), 0x11, 2)
    assert stable_since(tmp_path, seen, 100.0) == 100.0
    assert stable_since(tmp_path, seen, 130.0) == 100.0  # a later gate: the same since 100
    elected = Evidence.of(
        snap(
            [member("cp1"), member("cp2"), member("cp3")],
            {n: status(n, leader="cp2", term=3) for n in ("cp1", "cp2", "cp3")},
        )
    )
    assert stable_since(tmp_path, elected, 140.0) == 140.0
    assert stable_since(tmp_path, None, 150.0) is None  # a poll that was not stable forgets it
    assert stable_since(tmp_path, elected, 160.0) == 160.0
    (tmp_path / "etcd-stable.json").write_text("{not json")
    assert stable_since(tmp_path, elected, 170.0) == 170.0


# ------------------------------------------------------------------------ stale learners


def test_stale_learner_rules_never_touch_voters() -> None:
    s = snap(
        [member("cp1"), member("cp2"), member("cp3", learner=True)],
        {"cp1": status("cp1"), "cp2": status("cp2"), "cp3": status("cp3", learner=True)},
    )
    assert stale_learners([s], node=None, max_lag=50) == []
    own = stale_learners([s], node="cp3", max_lag=50)
    assert [(x.member.id, "being (re)joined" in x.reason) for x in own] == [(IDS["cp3"], True)]
    assert stale_learners([s], node="cp2", max_lag=50) == []


def test_stale_learner_not_started_or_not_answering() -> None:
    s = snap(
        [member("cp1"), member("cp2", learner=True, started=False)],
        {"cp1": status("cp1"), "cp2": "UNAVAILABLE"},
    )
    (x,) = stale_learners([s], node=None, max_lag=50)
    assert "never started" in x.reason
    s2 = snap(
        [member("cp1"), member("cp2", learner=True)], {"cp1": status("cp1"), "cp2": "timed out"}
    )
    (y,) = stale_learners([s2], node=None, max_lag=50)
    assert "does not answer" in y.reason
    # the same learner while its node's kubeadm join still runs: mid-join, not stale
    assert stale_learners([s], node=None, max_lag=50, joining=frozenset({"cp2"})) == []
    (z,) = stale_learners([s], node="cp2", max_lag=50, joining=frozenset({"cp2"}))
    assert "being (re)joined" in z.reason


def test_stale_learner_not_catching_up_between_two_looks() -> None:
    def look(lead: int, mine: int) -> Snapshot:
        return snap(
            [member("cp1"), member("cp2", learner=True)],
            {"cp1": status("cp1", applied=lead), "cp2": status("cp2", applied=mine, learner=True)},
        )

    stuck = stale_learners([look(1000, 10), look(1100, 10)], node=None, max_lag=50)
    assert len(stuck) == 1 and "not catching up" in stuck[0].reason
    moving = stale_learners([look(1000, 10), look(1100, 900)], node=None, max_lag=50)
    assert moving == []
    once = stale_learners([look(1000, 10)], node=None, max_lag=50)
    assert once == []  # one look is not "for a while"


# ---------------------------------------------------------------------------------- leave


def test_quorum() -> None:
    assert [quorum(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]


def test_leave_allows_removing_one_of_three_healthy() -> None:
    s = healthy3()
    assert leave_refusal(s, s.members[2]) is None


def test_leave_refuses_the_last_voter() -> None:
    s = snap([member("cp1")], {"cp1": status("cp1")})
    assert "last voting member" in (leave_refusal(s, s.members[0]) or "")


def test_leave_refuses_to_break_quorum() -> None:
    # cp3 is down: removing healthy cp2 leaves cp1 + dead cp3, 1 healthy of 2 < quorum 2.
    s = snap(
        [member("cp1"), member("cp2"), member("cp3")],
        {"cp1": status("cp1"), "cp2": status("cp2"), "cp3": "timed out"},
    )
    assert "below the quorum" in (leave_refusal(s, s.members[1]) or "")
    # removing the dead one is what restores safety
    assert leave_refusal(s, s.members[2]) is None


def test_leave_refuses_without_quorum_and_allows_learners() -> None:
    s = snap(
        [member("cp1"), member("cp2"), member("cp3", learner=True)],
        {"cp1": status("cp1"), "cp2": "timed out", "cp3": status("cp3", learner=True)},
    )
    assert "no quorum" in (leave_refusal(s, s.members[0]) or "")
    assert leave_refusal(s, s.members[2]) is None


# --------------------------------------------------------------------------------- verify


def test_verify_checks() -> None:
    assert all(c.ok for c in etcd_checks(healthy3(), 3))
    s = snap(
        [member("cp1"), member("cp2", learner=True)], {"cp1": status("cp1"), "cp2": status("cp2")}
    )
    failed = {c.name for c in etcd_checks(s, 3) if not c.ok}
    assert failed == {"no learner", "expected voters"}
    (nodes,) = node_checks({"cp1": True, "cp2": False}, ["cp1", "cp2", "cp3"])
    assert not nodes.ok and "missing: cp3" in nodes.detail and "not Ready: cp2" in nodes.detail


def test_verify_wants_the_vip_on_one_control_plane_with_both_services_active() -> None:
    def state(node: str, holds: bool, haproxy: str = "active") -> EndpointState:
        return EndpointState(node, holds, {"keepalived": "active", "haproxy": haproxy})

    assert vip_check([state("cp1", True), state("cp2", False)]).detail == "on cp1"
    none = vip_check([state("cp1", False), state("cp2", False)])
    assert (none.ok, none.detail) == (False, "no control plane holds it")
    split = vip_check([state("cp1", True), state("cp2", True)])
    assert (split.ok, split.detail) == (False, "held by cp1, cp2")
    dead = vip_check([state("cp1", True, haproxy="failed")])
    assert (dead.ok, dead.detail) == (False, "held by cp1; cp1 haproxy failed")


# ------------------------------------------------------------------------------- diagnose


def paths(
    blocked: set[tuple[str, str, int]], refused: set[tuple[str, str, int]] = frozenset()
) -> list[TcpPath]:  # type: ignore[assignment]
    out = []
    for src in NODES:
        for dst in NODES:
            if src == dst:
                continue
            for port in (2379, 2380, 6443):
                key = (src, dst, port)
                err = (
                    "timeout" if key in blocked else "Connection refused" if key in refused else ""
                )
                out.append(TcpPath(src, dst, port, not err, err))
    return out


def test_recommend_names_the_blocked_peer_path_of_the_joiner_first() -> None:
    s = snap([member("cp1")], {"cp1": status("cp1")})
    cp2_down = {("cp2", "cp3", p) for p in (2379, 2380, 6443)} | {
        ("cp3", "cp2", p) for p in (2379, 2380, 6443)
    }
    blocked = {
        ("cp1", "cp2", 2380),
        ("cp2", "cp1", 2380),
        ("cp3", "cp2", 2380),
        ("cp2", "cp3", 2380),
    }
    rec = recommend(paths(blocked, refused=cp2_down - blocked), s, [])
    assert rec.cause.startswith("network: cp2 -> cp1:2380")
    assert "cp1 -> cp2:2380" in rec.cause


def test_recommend_ignores_refused_ports_of_nodes_not_joined() -> None:
    s = snap([member("cp1")], {"cp1": status("cp1")})
    refused = {
        (a, b, p) for a in NODES for b in ("cp2", "cp3") for p in (2379, 2380, 6443) if a != b
    }
    assert recommend(paths(set(), refused), s, []).cause == "no problem found"


def test_recommend_ssh_then_stale_learner() -> None:
    s = snap(
        [member("cp1"), member("cp2", learner=True, started=False)],
        {"cp1": status("cp1"), "cp2": "UNAVAILABLE"},
    )
    ps = paths(set())
    ssh_down = [TcpPath("cp3", d, 2380, False, "ssh: cp3: unreachable") for d in ("cp1", "cp2")]
    assert recommend(ps + ssh_down, s, []).cause == "cp3 unreachable over SSH"
    stale = stale_learners([s], node=None, max_lag=50)
    assert recommend(ps, s, stale).cause == "stale learner cp2 (not started) blocks joins"


def test_recommend_member_not_answering_and_alarm() -> None:
    s = snap(
        [member("cp1"), member("cp2")],
        {"cp1": status("cp1"), "cp2": "UNAVAILABLE: connection refused"},
    )
    assert recommend(paths(set()), s, []).cause == "etcd on cp2 does not answer"
    crashing = NodeHealth("cp2", "True", pods={"etcd-cp2": "Running: CrashLoopBackOff, 5 restarts"})
    rec = recommend(paths(set()), s, [], [crashing])
    assert "its static pod: etcd-cp2: Running: CrashLoopBackOff, 5 restarts" in rec.detail
    s2 = snap([member("cp1")], {"cp1": status("cp1")}, alarms=[Alarm(IDS["cp1"], "NOSPACE")])
    assert recommend(paths(set()), s2, []).cause == "etcd alarm raised: NOSPACE"


def test_a_node_not_ready_is_named_with_its_kubelet_or_its_cni_pod() -> None:
    """The guide's "join succeeds but node stays NotReady": after every etcd and network cause,
    the kubelet first (nothing posts the node's status without it), then the CNI pod."""
    s = snap([member("cp1")], {"cp1": status("cp1")})
    ok = paths(set())
    lost = "Ready=Unknown NodeStatusUnknown: Kubelet stopped posting node status."
    stopped = NodeHealth("worker1", "Unknown", [lost], {}, "inactive", ["Stopped kubelet"])
    rec = recommend(ok, s, [], [stopped])
    assert rec.cause == "node worker1 NotReady"
    assert "the kubelet on worker1 is inactive" in rec.detail
    assert "lab ssh worker1 -- systemctl start kubelet" in rec.detail
    cni = NodeHealth(
        "worker1",
        "False",
        ["Ready=False KubeletNotReady: container runtime network not ready"],
        {"kube-flannel-ds-x": "Pending: ContainerCreating, 0 restarts"},
        "active",
    )
    rec = recommend(ok, s, [], [cni])
    assert "its CNI pod kube-flannel-ds-x is Pending: ContainerCreating" in rec.detail
    assert recommend(ok, s, [], []).cause == "no problem found"


def test_a_pods_state_and_a_nodes_abnormal_conditions_read_from_the_api() -> None:
    crash = {
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {"state": {"waiting": {"reason": "CrashLoopBackOff"}}, "restartCount": 5}
            ],
        }
    }
    assert pod_state(crash) == "Running: CrashLoopBackOff, 5 restarts"
    running = {"status": {"phase": "Running", "containerStatuses": [{"state": {"running": {}}}]}}
    assert pod_state(running) == "Running, 0 restarts"
    conditions = [
        {"type": "MemoryPressure", "status": "False"},
        {"type": "DiskPressure", "status": "True", "reason": "KubeletHasDiskPressure"},
        {"type": "Ready", "status": "False", "reason": "KubeletNotReady", "message": "cni"},
    ]
    assert abnormal(conditions) == [
        "DiskPressure=True KubeletHasDiskPressure",
        "Ready=False KubeletNotReady: cni",
    ]
