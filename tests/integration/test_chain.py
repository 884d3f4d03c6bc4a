"""The join chain's own commands, run as the chain runs them, on the integration harness.

The program tier checks which command strings lab/infra/chain.py registers; the other tests here
run `lab` commands they write themselves. This test closes the gap: it takes the plan of the
harness config and, step by step in plan order, runs exactly what the chain registers
(`lab.infra.chain.step_commands`, the function JoinChain builds its resources from):

- every step (a local.Command, cp1-init's `lab init` too): its shell string, run with `sh -c` in
  the project directory (where the provider runs, so `.venv/bin/lab` and the stack's
  Pulumi.<stack>.yaml resolve), in the harness's host namespace; an upgrade step's create (a
  message) and its update (what a changed version runs: no-ops on a cluster made at the version);
- the kubeconfig (a remote.Command): its command over SSH to cp1 as the config's login user, as
  one command string that the login shell runs (what remote.Command's SSH session does);
- then, with the config edited down to one control plane, what `pulumi up` (or `pulumi destroy`)
  runs: the joins' delete commands (`lab leave NODE --address ...`), in reverse, and last
  cp1-init's (`lab init --forget`).

etcd, SSH, sudo and the network are real; kubeadm and cloud-init are the stand-ins of standin.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable

import yaml

from lab import releases
from lab.config import LabConfig, load_config, stack_overrides
from lab.infra.chain import KUBECONFIG_COMMAND, LabInvocation, step_commands
from lab.topology import build_topology, chain_plan

from .harness import REPO, Harness

STACK = f"integration-{os.getpid()}"  # its Pulumi.<stack>.yaml has only libvirt:uri
NODES = ("cp1", "cp2", "cp3", "worker1")


def on_first(
    lab: Harness,
    user: str,
    address: str,
    command: str,
) -> subprocess.CompletedProcess[str]:
    """remote.Command: `command` as the SSH session's command, run by the login's shell."""
    return lab.host.exec([*lab.ssh_argv(), f"{user}@{address}", command], check=False, timeout=300)


def on_host(lab: Harness, command: str) -> subprocess.CompletedProcess[str]:
    """local.Command: `sh -c command` in the project directory, here in the lab host's netns."""
    return subprocess.run(
        ["ip", "netns", "exec", lab.host.ns, "sh", "-c", command],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ),
        timeout=300,
        check=False,
    )


def test_chain_runs_its_own_commands_then_destroy(make_harness: Callable[..., Harness]) -> None:
    lab = make_harness(nodes=NODES)  # cp1's init.yaml, as cloud-init writes it
    cfg = load_config(lab.config_path)
    assert cfg.kubernetes.cni == "none" and cfg.kubernetes.control_plane_endpoint.mode == "cp1"
    stack_file = REPO / f"Pulumi.{STACK}.yaml"
    stack_file.write_text("config:\n  libvirt:uri: qemu:///system\n")
    try:
        run_the_chain(lab, cfg)
    finally:
        stack_file.unlink()


def run_the_chain(lab: Harness, cfg: LabConfig) -> None:
    assert set(stack_overrides(STACK, REPO)) == {"libvirt_uri"}
    topo = build_topology(cfg)
    first = topo.first
    invocation = LabInvocation(str(lab.config_path), STACK)
    plan = chain_plan(cfg)

    def run(name: str, command: str, remote: bool) -> str:
        start = time.monotonic()
        if remote:
            proc = on_first(lab, cfg.ssh.user, str(first.address), command)
        else:
            proc = on_host(lab, command)
        took = time.monotonic() - start
        where = f"ssh {cfg.ssh.user}@{first.name}" if remote else "sh -c"
        print(
            f"== {name} ({where}, {took:.1f}s) -> exit {proc.returncode}\n{command}\n"
            f"{proc.stdout}{proc.stderr}"
        )
        assert proc.returncode == 0, (
            f"{name} exited {proc.returncode}:\n{command}\n{proc.stdout}{proc.stderr}"
        )
        return proc.stdout + proc.stderr

    ran = []
    for step in plan:
        commands = step_commands(step, cfg, invocation)
        out = run(step.name, commands.create, remote=False)
        ran.append(step.name)
        if step.kind == "init":
            assert "Using certificate key" in out  # kubeadm's own output, relayed by lab init
            kubeconfig = run("kubeconfig", KUBECONFIG_COMMAND, remote=True)
            assert "kind: Config" in kubeconfig
            assert releases.recorded(cfg.state_dir) == cfg.kubernetes.version
        if step.phase == "upgrade":  # created: says so; updated (a changed version): runs lab
            assert out.startswith(f"{step.name}: new, at v{cfg.kubernetes.version} already")
            out = run(f"{step.name} (update)", str(commands.update), remote=False)
        if step.kind == "gate" and step.name != "cp1-gate":  # a join's own gate saw it so
            assert "the same since an earlier check" in out, out
        if step.kind == "upgrade":  # every node was made at the version: read on it, a no-op
            assert f"{step.node}: already at v{cfg.kubernetes.version}" in out
    assert ran == [s.name for s in plan] and ran[-1] == "upgrade-verify"

    assert lab.voters() == ["cp1", "cp2", "cp3"] and not lab.learners()
    assert all(m.get("name") for m in lab.members())
    nodes = json.loads(
        lab.ssh(
            first.name, "kubectl --kubeconfig /etc/kubernetes/admin.conf get nodes -o json"
        ).stdout
    )["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == sorted(NODES)

    # cp1-init again (a re-run of `pulumi up` with a changed trigger): idempotent, etcd unchanged
    ids = sorted(m["ID"] for m in lab.members())
    out = run(f"{plan[0].name} again", step_commands(plan[0], cfg, invocation).create, False)
    assert "kubeadm init done" in out and "kubeadm init (in the background" not in out
    assert sorted(m["ID"] for m in lab.members()) == ids

    # Scale down to one control plane by editing the config, then what `pulumi up` runs: the
    # removed joins' stored delete commands, dependents first (workers, cp3, cp2). They were
    # registered before the edit and must not need the config to know their node.
    deletes = [
        (s.name, d)
        for s in plan
        if s.kind == "join" and (d := step_commands(s, cfg, invocation).delete)
    ]
    assert [name for name, _ in reversed(deletes)] == ["worker1-join", "cp3-join", "cp2-join"]
    edited = yaml.safe_load(lab.config_path.read_text())
    edited["control_plane"]["count"], edited["workers"]["count"] = 1, 0
    lab.config_path.write_text(yaml.safe_dump(edited, sort_keys=False))
    assert [n.name for n in build_topology(load_config(lab.config_path)).nodes] == ["cp1"]
    for name, delete in reversed(deletes):
        run(f"{name} (delete)", delete, remote=False)
    assert lab.voters() == ["cp1"] and not lab.learners()
    nodes = json.loads(
        lab.ssh(
            first.name, "kubectl --kubeconfig /etc/kubernetes/admin.conf get nodes -o json"
        ).stdout
    )["items"]
    assert [n["metadata"]["name"] for n in nodes] == ["cp1"]

    # Destroy's last step: cp1-init's delete forgets the cluster's version.
    run("cp1-init (delete)", str(step_commands(plan[0], cfg, invocation).delete), remote=False)
    assert releases.recorded(cfg.state_dir) is None
