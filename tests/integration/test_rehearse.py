"""Issue 30: `lab rehearse` plays every scenario of the guide on the harness's 3 + 1 lab.

etcd, SSH, iptables and the network are real; kubeadm, the kubelet and the machines' snapshots
are the stand-ins of standin.py and virsh_standin.py (a stopped kubelet marks its Node NotReady at
once, as the node controller does after its grace period). `make e2e-ha` plays them on real
guests.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import yaml

from .harness import Harness
from .test_join import CPS, ok, started


def test_every_scenario_is_injected_diagnosed_and_recovered(
    make_harness: Callable[..., Harness],
) -> None:
    lab = started(make_harness(nodes=(*CPS, "worker1")))
    cfg = yaml.safe_load(lab.config_path.read_text())
    cfg["workers"]["count"] = 1
    lab.config_path.write_text(yaml.safe_dump(cfg))
    for node in ("cp2", "cp3", "worker1"):
        ok(lab.lab("join", node))
    ids = {m["name"]: m["ID"] for m in lab.members()}
    listed = ok(lab.lab("rehearse", "--list")).splitlines()
    assert [line.split()[0] for line in listed] == [
        "peer-blocked",
        "peer-blocked-for-good",
        "stale-learner",
        "leader-killed",
        "not-ready",
        "packet-loss",
    ]
    proc = lab.lab("rehearse", "--json", timeout=900)
    ok(proc)
    rows: dict[str, dict[str, Any]] = {r["scenario"]: r for r in json.loads(proc.stdout)}
    for name, row in rows.items():
        assert row["ok"] and not row["error"], row
        assert row["members_before"] == row["members_after"] == list(CPS), name
        assert row["learners_left"] == 0 and row["recovered_seconds"] is not None, name
    assert "cp3 -> " in rows["peer-blocked"]["diagnosed"]
    assert ":2380 blocked" in rows["peer-blocked"]["diagnosed"]
    # The same attempt, or the next: etcd's peer streams can take tens of seconds to come back
    # after a full block (TCP's retransmission backoff), beyond a join's wait for its promote.
    assert rows["peer-blocked"]["did"].startswith("joined on attempt ")
    assert "gave up" in rows["peer-blocked-for-good"]["did"]
    assert "etcd as before" in rows["peer-blocked-for-good"]["did"]
    assert rows["stale-learner"]["diagnosed"].startswith("stale learner ")
    assert rows["leader-killed"]["diagnosed"].endswith(" does not answer")
    assert rows["leader-killed"]["did"].startswith("the gate waited")
    assert rows["not-ready"]["diagnosed"] == "node worker1 NotReady"
    assert rows["packet-loss"]["did"].startswith("joined on attempt")
    # Every drill restored its snapshot: the members are the ones made before the rehearsal.
    assert {m["name"]: m["ID"] for m in lab.members()} == ids
    assert json.loads(ok(lab.lab("snapshot", "list", "--json"))) == []
    ok(lab.lab("verify"))


def test_a_scenario_the_lab_cannot_play_is_refused_with_why(
    make_harness: Callable[..., Harness],
) -> None:
    lab = started(make_harness(nodes=("cp1",)))
    cfg = yaml.safe_load(lab.config_path.read_text())
    cfg["control_plane"]["count"] = 1
    lab.config_path.write_text(yaml.safe_dump(cfg))
    refused = lab.lab("rehearse", "peer-blocked")
    assert refused.returncode == 2
    assert "needs 3 control planes, this lab has 1" in refused.stderr
    unknown = lab.lab("rehearse", "no-such-drill")
    assert unknown.returncode == 2 and "no scenario no-such-drill" in unknown.stderr
    assert json.loads(ok(lab.lab("snapshot", "list", "--json"))) == []  # nothing was saved
