"""What the operations read from a node's output, parsed without a node: each parser is fed the
text the node prints, kept in tests/unit/recorded/. probe.txt has the probe script's own lines
(run here against loopback, addresses then set to the lab's), ca-hash.txt is openssl + sha256sum
of a generated CA; the kubeadm and kubectl files are in the exact format those tools print
(kubeadm-join-etcd-join.txt ends with the failure real kubeadm 1.34 gave under emulation;
kubeadm-join-member-lookup.txt and kubeadm-join-sync-endpoints.txt are the error lines of two
more, from HA e2e runs; kubeadm-join-tls-bootstrap.txt ends with the error line of HA run 8,
after the lines kubeadm 1.34 prints before it; kubeadm-join-wait-control-plane.txt and
kubeadm-join-run-condition.txt are the error lines of two runs of the remaining phases in HA run
10, kubeadm-join-wait-control-plane-livez.txt those of one in HA run 13;
kubeadm-join-done-message-panic.txt is the whole output of one in HA run 16;
kubeadm-join-1.36-wait-control-plane.txt is cp3's whole `kubeadm join` (1.36.3) in HA run 20 but
the etcd client's JSON warnings;
kubelet-journal-not-registered.txt is journalctl's last lines of cp3's kubelet in HA run 19, each
cut at 300 characters)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from lab.etcd import describe
from lab.ops.classify import classify
from lab.ops.common import OpFailed
from lab.ops.diagnose import last_distinct
from lab.ops.join import RUN_AGAIN, after_etcd_join, finished_phases
from lab.ops.node import (
    ca_cert_hash,
    gist,
    kubelet_versions,
    last_line,
    panicked_after_its_phases,
    parse_probes,
    ready_nodes,
)
from lab.ops.verify import version_check

RECORDED = Path(__file__).with_name("recorded")


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


def test_probe_lines_become_paths_and_a_missing_line_is_no_result() -> None:
    targets = [
        ("cp1", "10.30.0.11", 2380),
        ("cp3", "10.30.0.13", 2380),
        ("api", "10.30.0.11", 6443),
        ("cp4", "10.30.0.14", 2380),
        ("cp5", "10.30.0.15", 2380),
    ]
    paths = parse_probes(recorded("probe.txt"), "cp2", targets)
    assert [(p.target, p.ok, p.error, p.blocked) for p in paths] == [
        ("cp1", True, "", False),
        ("cp3", False, "Connection refused", False),  # answered: nothing listens yet
        ("api", False, "timeout", True),
        ("cp4", False, "No route to host", True),
        ("cp5", False, "no result", True),
    ]
    assert paths[2].name == "cp2 -> api:6443"


def test_ca_hash_from_sha256sum() -> None:
    assert ca_cert_hash(recorded("ca-hash.txt")) == (
        "sha256:fd3b1a9e679c2e93de0e42426ca4685371bb9052f612b73cf3b7e9db6ddf8552"
    )
    with pytest.raises(OpFailed, match="not a SHA-256 digest"):
        ca_cert_hash("sha256sum: -: No such file or directory\n")


def test_token_and_certificate_key_are_the_last_line() -> None:
    assert last_line(recorded("token-create.txt")) == "mm0xpb.v5bnwbb1x3cxi0n7"
    key = last_line(recorded("upload-certs.txt"))
    assert len(key) == 64 and key.startswith("8e3c1bd8")
    with pytest.raises(OpFailed, match="printed nothing"):
        last_line("\n\n")


def test_ready_nodes_and_kubelet_versions_from_kubectl_json() -> None:
    assert ready_nodes(recorded("kubectl-get-nodes.json")) == {"cp1": True, "worker1": False}
    versions = kubelet_versions(recorded("kubectl-get-nodes.json"))
    assert versions == {"cp1": "v1.34.4", "worker1": "?"}  # worker1's status has no nodeInfo yet
    assert version_check({"cp1": "v1.34.4", "worker1": "v1.34.4"}, "1.34.4").ok
    behind = version_check(versions | {"worker1": "v1.33.9"}, "1.34.4")
    assert not behind.ok and behind.detail == "want v1.34.4: worker1 at v1.33.9"
    with pytest.raises(OpFailed, match="did not print JSON"):
        ready_nodes('error: the server doesn\'t have a resource type "nodes"')


def test_gist_of_a_failed_kubeadm_join_names_the_phase() -> None:
    text = recorded("kubeadm-join-etcd-join.txt")
    summary = gist(text)
    assert summary.startswith("error execution phase etcd-join:")
    assert "context deadline exceeded" in summary and "[preflight]" not in summary
    assert gist("") == "no output"
    whole = gist(recorded("kubeadm-join-1.36-wait-control-plane.txt"))
    assert "RuntimeConfig" not in whole and "error execution phase wait-control-plane" in whole


@pytest.mark.parametrize(
    "name",
    [
        "kubeadm-join-etcd-join.txt",  # waiting for the learner's status, default timeouts
        "kubeadm-join-member-lookup.txt",  # member list (2 s) after it started the learner
        "kubeadm-join-sync-endpoints.txt",  # member list (2 s) before it added a member
    ],
)
def test_etcd_join_giving_up_on_a_slow_etcd_is_named_as_such(name: str) -> None:
    """Real kubeadm 1.34, emulated: each etcd call of its etcd-join phase that ran out of time
    is the same cause (not a network timeout), whichever call it was."""
    text = recorded(name)
    assert "error execution phase etcd-join:" in gist(text)
    assert '"level"' not in gist(text) and "stack trace" not in gist(text)
    assert classify(text)[0] == "kubeadm-etcd-limit"


def test_a_tls_bootstrap_that_ran_out_is_not_a_network_timeout() -> None:
    """HA run 8, real kubeadm 1.34: the phases after etcd-join waited 20 min for the kubelet's
    TLS bootstrap against cp2's own API server; a network timeout it is not."""
    text = recorded("kubeadm-join-tls-bootstrap.txt")
    assert "error execution phase kubelet-wait-bootstrap:" in gist(text)
    assert classify(text)[0] == "kubelet-bootstrap"


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    empty = grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, empty, empty, details)


def test_etcd_errors_keep_etcds_words_and_shorten_grpcs() -> None:
    promote = "etcdserver: can only promote a learner member which is in sync with leader"
    assert describe(rpc_error(grpc.StatusCode.FAILED_PRECONDITION, promote)) == (
        f"FAILED_PRECONDITION: {promote}"
    )
    refused = (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.30.0.12:2379:"
        " Failed to connect to remote host: Connection refused"
    )
    assert describe(rpc_error(grpc.StatusCode.UNAVAILABLE, refused)) == (
        "UNAVAILABLE: connection refused"
    )
    wrapped = RuntimeError("member list")
    wrapped.__cause__ = rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    assert describe(wrapped) == "DEADLINE_EXCEEDED: timed out"


@pytest.mark.parametrize(
    ("name", "cause", "finished"),
    [
        # failed in the last phase: the next run is wait-control-plane alone, no config fetch
        (
            "kubeadm-join-wait-control-plane.txt",
            "control-plane-not-live",
            ("kubelet-wait-bootstrap", "control-plane-join/mark-control-plane"),
        ),
        # HA run 13: the same wait, the API server answering /livez with its etcd check failing
        (
            "kubeadm-join-wait-control-plane-livez.txt",
            "control-plane-not-live",
            ("kubelet-wait-bootstrap", "control-plane-join/mark-control-plane"),
        ),
        # HA run 20, kubeadm 1.36: the whole join got that far, its member a voter
        (
            "kubeadm-join-1.36-wait-control-plane.txt",
            "control-plane-not-live",
            ("kubelet-wait-bootstrap", "control-plane-join/mark-control-plane"),
        ),
        # HA run 25, kubeadm 1.36: the wait's last /livez met the API server between restarts
        (
            "kubeadm-join-wait-control-plane-refused.txt",
            "control-plane-not-live",
            ("kubelet-wait-bootstrap", "control-plane-join/mark-control-plane"),
        ),
        # failed before the first finishing phase ran: nothing is done
        ("kubeadm-join-run-condition.txt", "api-timeout", ()),
    ],
)
def test_a_run_of_the_remaining_phases_goes_on_where_the_last_one_failed(
    name: str, cause: str, finished: tuple[str, ...]
) -> None:
    """Real kubeadm 1.34 (HA runs 10 and 13) and 1.36 (runs 20 and 25): each is a failure another
    run may get past (the lab's RUN_AGAIN), run again from the failed phase."""
    text = recorded(name)
    assert classify(text)[0] == cause and cause in RUN_AGAIN
    assert finished_phases(text) == finished
    mark = "error execution phase control-plane-join/mark-control-plane: timed out"
    assert finished_phases(mark) == ("kubelet-wait-bootstrap",)
    assert finished_phases("no phase named") == ()


def test_the_phases_skipped_after_etcd_join_are_those_kubeadm_of_the_release_names() -> None:
    """kubeadm 1.36 removed control-plane-join/etcd and refuses its name in --skip-phases
    (HA run 18, 1.37.2: "invalid phase name: control-plane-join/etcd")."""
    for version in ("1.34.4", "1.35.4"):
        assert "control-plane-join/etcd" in after_etcd_join(version)
    for version in ("1.36.3", "1.37.2"):
        assert "control-plane-join/etcd" not in after_etcd_join(version)
        assert after_etcd_join(version)[-1] == "etcd-join"


def test_a_panic_on_kubeadms_done_message_is_told_from_a_failed_phase() -> None:
    """Real kubeadm 1.34, HA run 16: wait-control-plane alone passed (the API server healthy after
    9 min), then the join command panicked printing its done message; a panic inside a phase
    has the phase's frames first."""
    done = recorded("kubeadm-join-done-message-panic.txt")
    assert panicked_after_its_phases(done)
    in_phase = done.replace(
        "goroutine 1 [running]:\n",
        "goroutine 1 [running]:\nk8s.io/kubernetes/cmd/kubeadm/app/phases/etcd.Promote(0x0)\n",
    )
    assert not panicked_after_its_phases(in_phase)
    assert not panicked_after_its_phases(recorded("kubeadm-join-wait-control-plane.txt"))


def test_the_kubelet_log_keeps_its_last_different_messages_not_one_repeated() -> None:
    """HA run 19: "Unable to register mirror pod" five times in 0.4 s hid why the node could
    not register: its own API server refused connections."""
    lines = recorded("kubelet-journal-not-registered.txt").splitlines()
    shown = last_distinct(lines, 3)
    assert [line.split("] ")[1][:40] for line in shown] == [
        '"Unable to write event (may retry after ',
        '"Unable to register node with API server',
        '"Unable to register mirror pod because n',
    ]
    assert shown[-1] == lines[-1] and shown[1] == lines[4]  # the last of each, as printed
    assert len(last_distinct(lines, 10)) == 5
    assert last_distinct(["", "  "], 5) == []
