"""The control-plane VIP (endpoint mode `vip`): this host's real keepalived and haproxy, in the
test nodes, configured and started by `lab init` and `lab join` over SSH; real VRRP on the bridge,
real haproxy health checks against the stand-in API servers (TLS, `200 ok`). What the VIP does on
real guests with real API servers is the e2e tier's."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

from .harness import Harness, wait_until

VIP = "10.30.0.10"
CPS = ("cp1", "cp2", "cp3")


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


def holders(lab: Harness) -> list[str]:
    """The nodes that have the VIP on their interface."""
    return [
        name
        for name, node in lab.nodes.items()
        if f" {VIP}/" in node.exec(["ip", "-o", "-4", "addr", "show", "dev", "eth0"]).stdout
    ]


def through_vip(lab: Harness) -> str:
    """GET /healthz through the VIP and haproxy, from the lab host."""
    url = f"https://{VIP}:8443/healthz"
    return lab.host.exec(["curl", "-sk", "--max-time", "5", url], check=False).stdout


def vip_check(lab: Harness) -> dict[str, object]:
    checks = json.loads(lab.lab("verify", "--json").stdout)["checks"]
    return next(c for c in checks if c["check"] == "endpoint VIP")


def test_the_vip_stays_on_a_control_plane_whose_api_server_answers(
    make_harness: Callable[..., Harness],
) -> None:
    lab = make_harness(nodes=CPS, endpoint="vip")
    out = ok(lab.lab("init"))
    assert f"endpoint {VIP}:8443 served" in out
    wait_until(lambda: holders(lab) == ["cp1"], 30, "the VIP on cp1")
    wait_until(lambda: through_vip(lab) == "ok", 30, "/healthz through the VIP")

    ok(lab.lab("join", "cp2"))
    assert holders(lab) == ["cp1"]  # a join does not move the VIP
    assert vip_check(lab) == {"check": "endpoint VIP", "ok": True, "detail": "on cp1"}

    # cp1's API server stops answering: its keepalived check fails and cp2 outranks it.
    lab.nodes["cp1"].block_port(6443)
    wait_until(lambda: holders(lab) == ["cp2"], 90, "the VIP to move to cp2")
    wait_until(lambda: through_vip(lab) == "ok", 30, "/healthz through the VIP on cp2")
    diagnosis = json.loads(lab.lab("diagnose", "--json").stdout)
    held = {e["node"]: e["holds_vip"] for e in diagnosis["endpoint"]}
    assert held == {"cp1": False, "cp2": True, "cp3": False}

    # It answers again: cp1, the highest priority, takes the VIP back.
    lab.nodes["cp1"].unblock_port(6443)
    wait_until(lambda: holders(lab) == ["cp1"], 90, "the VIP back on cp1")
    wait_until(lambda: through_vip(lab) == "ok", 30, "/healthz through the VIP on cp1")
