"""The Pulumi program's resources and the exact edges of the join chain, under mocks."""

from __future__ import annotations

import itertools
import json
import shlex
import subprocess
from pathlib import Path

import pytest

from lab import cli
from lab.config import load_config
from tests.program.conftest import Graph, is_secret

MACHINE_PARTS = {"disk", "cloudinit", "domain"}
UPGRADE_CHAIN = [
    "cp1-upgrade",
    "cp1-upgrade-gate",
    "cp2-upgrade",
    "cp2-upgrade-gate",
    "cp3-upgrade",
    "cp3-upgrade-gate",
    "worker1-upgrade",
    "worker2-upgrade",
    "upgrade-verify",
]


def machine(graph: Graph, node: str) -> set[str]:
    return {f"{node}-{part}" for part in MACHINE_PARTS} & graph.resources.keys()


def chain_deps(graph: Graph, step: str) -> set[str]:
    """A step's dependencies on other chain steps (machines left out)."""
    steps = set(graph.named("command:local:Command")) | set(graph.named("command:remote:Command"))
    return graph.deps(step) & steps


def test_default_lab_registers_network_machines_and_chain(run_program) -> None:
    g = run_program()
    assert g.named("libvirt:index/network:Network") == ["network"]
    assert g.named("libvirt:index/pool:Pool") == ["pool"]
    assert set(g.named("lab:libvirt:Machine")) == {"cp1", "cp2", "cp3", "worker1", "worker2"}
    assert len(g.named("libvirt:index/domain:Domain")) == 5
    assert g.outputs["join_order"] == [
        "cp1-init",
        "cp1-gate",
        "cp2-join",
        "cp2-gate",
        "cp3-join",
        "cp3-gate",
        "worker1-join",
        "worker2-join",
        "verify",
        *UPGRADE_CHAIN,
    ]
    # A tree in `pulumi preview`: every resource sits under a component.
    assert g.resources["cp2-domain"].parent == "cp2"
    assert g.resources["cp2-join"].parent == "join-chain"
    assert g.resources["join-chain"].parent == "k8s-lab"


def test_chain_edges_are_exactly_the_seed_procedure(run_program) -> None:
    g = run_program()
    assert chain_deps(g, "cp1-init") == set()
    assert chain_deps(g, "cp1-gate") == {"cp1-init"}
    assert chain_deps(g, "cp2-join") == {"cp1-gate"}
    assert chain_deps(g, "cp2-gate") == {"cp2-join"}
    assert chain_deps(g, "cp3-join") == {"cp2-gate"}
    assert chain_deps(g, "cp3-gate") == {"cp3-join"}
    assert chain_deps(g, "worker1-join") == {"cp3-gate"}
    assert chain_deps(g, "worker2-join") == {"cp3-gate"}
    assert chain_deps(g, "verify") == {"worker1-join", "worker2-join"}
    # The upgrade: one control plane at a time behind a gate, then one worker at a time.
    for before, step in itertools.pairwise(["verify", *UPGRADE_CHAIN]):
        assert chain_deps(g, step) == {before}, step


def test_workers_upgrade_as_many_at_once_as_the_config_allows(run_program) -> None:
    g = run_program("kubernetes: {upgrade_workers_at_once: 2}\n", workers="3")
    assert (
        chain_deps(g, "worker1-upgrade") == chain_deps(g, "worker2-upgrade") == {"cp3-upgrade-gate"}
    )
    assert chain_deps(g, "worker3-upgrade") == {"worker1-upgrade", "worker2-upgrade"}
    assert chain_deps(g, "upgrade-verify") == {"worker3-upgrade"}


def test_a_changed_version_reruns_the_upgrade_chain_and_replaces_nothing_else(
    run_program,
) -> None:
    """Machines keep the image they were made from (the base image ignores its source); every
    other resource's inputs stay, and each upgrade step's input holds the version."""
    before, after = run_program(), run_program("kubernetes: {version: 1.36.3}\n")
    changed = {
        name
        for name, r in before.resources.items()
        if r.custom and r.inputs != after.resources[name].inputs
    }
    assert changed == set(UPGRADE_CHAIN)
    for step in UPGRADE_CHAIN:  # an input, not a trigger: a change runs the update command
        assert before.input(step, "environment") == {"LAB_KUBERNETES_VERSION": "1.37.2"}
        assert after.input(step, "environment") == {"LAB_KUBERNETES_VERSION": "1.36.3"}
        assert not before.input(step, "triggers")
    assert before.resources["base-image"].ignore_changes == {"source"}


def test_each_join_waits_for_its_own_machine_only(run_program) -> None:
    g = run_program()
    for node in ("cp2", "cp3", "worker1", "worker2"):
        assert machine(g, node) <= g.deps(f"{node}-join"), node
        others = {"cp1", "cp2", "cp3", "worker1", "worker2"} - {node}
        for other in others:
            assert not machine(g, other) & g.deps(f"{node}-join"), (node, other)
    assert machine(g, "cp1") <= g.deps("cp1-init")


def test_control_planes_boot_together_and_workers_after_the_last_gate(run_program) -> None:
    """A booting guest takes CPU from an emulated join: a worker's domain waits for the control
    planes' last gate, and nothing else of a machine waits for another node."""
    g = run_program()
    for node in ("cp1", "cp2", "cp3", "worker1", "worker2"):
        boots_after = {"cp3-gate"} if node.startswith("worker") else set()
        for part in MACHINE_PARTS:
            deps = g.deps(f"{node}-{part}")
            others = {d for d in deps if d.startswith(("cp", "worker")) and not d.startswith(node)}
            assert others == (boots_after if part == "domain" else set()), (node, part)
    assert g.deps("cp1-domain") >= {"cp1-disk", "cp1-cloudinit", "network"}
    assert g.deps("cp1-disk") >= {"base-image", "pool"}


def test_scaling_changes_no_input_of_the_nodes_that_stay(run_program) -> None:
    """A changed cloud-init disk or join is replaced, and a replaced control plane leaves the
    cluster: adding a worker or scaling control planes 3 -> 1 -> 3 must not touch the others."""
    runs = [
        run_program(control_planes="3", workers="2"),
        run_program(control_planes="1", workers="0"),
        run_program(control_planes="3", workers="3"),
    ]
    for before, after in itertools.pairwise(runs):
        kept = [
            name
            for name, r in before.resources.items()
            if r.custom and name in after.resources and name.startswith(("cp", "worker"))
        ]
        assert "cp1-cloudinit" in kept and "cp1-init" in kept
        for name in kept:
            assert before.resources[name].inputs == after.resources[name].inputs, name


def test_steps_run_the_lab_commands_a_person_would_type(run_program, tmp_path) -> None:
    g = run_program()
    tail = f"--config {tmp_path / 'cluster.yaml'} --stack dev"
    assert g.input("cp1-gate", "create") == f".venv/bin/lab gate --voters 1 {tail}"
    assert g.input("cp2-join", "create") == f".venv/bin/lab join cp2 {tail}"
    host_key = (tmp_path / "state" / "hosts" / "cp2.pub").read_text().strip()
    assert g.input("cp2-join", "delete") == (
        f".venv/bin/lab leave cp2 --address 10.30.0.12 --role control-plane"
        f" --host-key '{host_key}' {tail}"
    )
    assert g.input("worker1-join", "delete").startswith(
        ".venv/bin/lab leave worker1 --address 10.30.0.21 --role worker --host-key"
    )
    assert g.input("cp3-gate", "create") == f".venv/bin/lab gate --voters 3 {tail}"
    assert g.input("verify", "create") == f".venv/bin/lab verify --wait {tail}"
    assert g.input("verify", "delete") is None
    assert g.input("cp1-init", "create") == f".venv/bin/lab init {tail}"
    assert g.input("cp1-init", "delete") == f".venv/bin/lab init --forget {tail}"
    # An upgrade step is created with its node, made at the version: it asks nothing of the
    # guests then; a changed version runs its update.
    assert g.input("cp1-upgrade", "update") == f".venv/bin/lab upgrade cp1 {tail}"
    assert g.input("cp1-upgrade", "delete") is None
    assert g.input("cp2-upgrade-gate", "update") == f".venv/bin/lab gate {tail}"  # every cp
    assert g.input("upgrade-verify", "update") == f".venv/bin/lab verify --wait {tail}"
    for step in UPGRADE_CHAIN:
        assert g.input(step, "create").startswith(f"echo '{step}: new, at v1.37.2 already;")


def test_a_joins_delete_names_its_node_whatever_the_config_says_later(
    run_program, tmp_path
) -> None:
    """Pulumi runs a removed join's stored delete after the config dropped the node: the command
    itself must say which node (address, role, host key) for `lab leave` to find it."""
    g = run_program()
    args = cli.parser().parse_args(shlex.split(g.input("cp3-join", "delete"))[1:])
    scaled_down = load_config(tmp_path / "cluster.yaml", {"control_planes": "1", "workers": "0"})
    node = cli.leaving_node(scaled_down, args)
    assert (node.name, str(node.address), node.role) == ("cp3", "10.30.0.13", "control-plane")
    assert args.host_key == (tmp_path / "state" / "hosts" / "cp3.pub").read_text().strip()


def test_a_rebuilt_machine_leaves_before_it_joins_again(run_program) -> None:
    g = run_program()
    joins = [n for n in g.resources if n.endswith("-join")]
    assert joins and all(g.resources[n].delete_before_replace for n in joins)
    assert all(g.input(n, "triggers") for n in joins)  # the machine's domain id
    libvirt_objects = [r for r in g.resources.values() if r.type.startswith("libvirt:index/")]
    assert libvirt_objects and all(r.delete_before_replace for r in libvirt_objects)


def test_ssh_pins_the_host_key_and_secrets_stay_secret(run_program, tmp_path) -> None:
    g = run_program()
    conn = g.input("kubeconfig", "connection")  # the one step that is not a `lab` command
    conn = conn["value"] if is_secret(conn) else conn
    pinned = (tmp_path / "state" / "hosts" / "cp1.pub").read_text().strip()
    assert conn["hostKey"] == pinned
    assert conn["dialErrorLimit"] == -1
    assert is_secret(conn["privateKey"]) or is_secret(g.input("kubeconfig", "connection"))
    # The user data carries each node's private host key: it stays in the seed file, and no
    # input Pulumi records holds it.
    recorded = json.dumps([r.inputs for r in g.resources.values()])
    for node in ("cp1", "cp2", "worker1"):
        body = (tmp_path / "state" / "hosts" / node).read_text().splitlines()[2:-1]
        assert body and not [line for line in body if line in recorded], node


def test_each_node_boots_from_a_cidata_seed_of_its_own(run_program, tmp_path) -> None:
    """The seed volume is uploaded from the ISO the lab wrote: cloud-init's NoCloud label, the
    node's own files, readable by its owner alone; an unchanged config keeps its seed's path, a
    changed one replaces the node's earlier seed."""
    g = run_program()
    seed = Path(g.input("cp2-cloudinit", "source"))
    assert seed.parent == (tmp_path / "state" / "seeds").resolve()
    assert g.input("cp2-cloudinit", "format") == "iso"
    disks = [d["volumeId"] for d in g.input("cp2-domain", "disks")]
    assert disks == ["cp2-disk-id", "cp2-cloudinit-id"]
    assert seed.stat().st_mode & 0o077 == 0
    info = subprocess.run(["isoinfo", "-d", "-i", seed], capture_output=True, text=True).stdout
    assert "Volume id: cidata" in info
    files = {
        name: subprocess.run(
            ["isoinfo", "-R", "-x", f"/{name}", "-i", seed], capture_output=True, text=True
        ).stdout
        for name in ("user-data", "meta-data", "network-config")
    }
    assert files["user-data"].startswith("#cloud-config") and "cp2" in files["user-data"]
    assert "instance-id: cp2" in files["meta-data"]
    assert "ethernets" in files["network-config"]
    assert sorted(p.name for p in seed.parent.glob("cp2-*.iso")) == [seed.name]

    again = run_program()
    assert again.input("cp2-cloudinit", "source") == str(seed)
    changed = run_program("ssh: {user: other}\n")
    assert changed.input("cp2-cloudinit", "source") != str(seed)
    assert [p.name for p in seed.parent.glob("cp2-*.iso")] == [
        Path(changed.input("cp2-cloudinit", "source")).name
    ]  # the earlier seed of the node is gone


def test_five_control_planes_extend_the_chain(run_program) -> None:
    g = run_program(control_planes="5", workers="1")
    order = g.outputs["join_order"]
    assert order[: order.index("cp5-gate") + 1] == [
        "cp1-init",
        "cp1-gate",
        "cp2-join",
        "cp2-gate",
        "cp3-join",
        "cp3-gate",
        "cp4-join",
        "cp4-gate",
        "cp5-join",
        "cp5-gate",
    ]
    assert chain_deps(g, "cp5-join") == {"cp4-gate"}
    assert chain_deps(g, "worker1-join") == {"cp5-gate"}


def test_zero_workers_verify_follows_the_last_gate(run_program) -> None:
    g = run_program(workers="0")
    assert "worker1" not in g.resources
    assert chain_deps(g, "verify") == {"cp3-gate"}


def test_one_control_plane_has_no_joins(run_program) -> None:
    g = run_program(control_planes="1", workers="0")
    assert g.outputs["join_order"] == [
        "cp1-init",
        "cp1-gate",
        "verify",
        "cp1-upgrade",
        "cp1-upgrade-gate",
        "upgrade-verify",
    ]
    assert not [n for n in g.resources if n.endswith("-join")]


def test_machines_only_registers_no_chain(run_program) -> None:
    g = run_program(kubernetes="false", control_planes="1", workers="0")
    assert "join-chain" not in g.resources
    assert not g.named("command:local:Command")
    assert g.named("libvirt:index/domain:Domain") == ["cp1-domain"]
    assert "kubeconfig" not in g.outputs


def test_kubeconfig_is_fetched_after_init_as_a_secret_output(run_program) -> None:
    g = run_program(control_planes="1", workers="0")
    assert "kubeconfig" in g.outputs
    assert "cp1-init" in g.deps("kubeconfig")
    assert g.resources["kubeconfig"].inputs.get("create") == "sudo cat /etc/kubernetes/admin.conf"
    assert "stdout" in g.resources["kubeconfig"].secret_outputs
    assert g.resources["kubeconfig"].inputs.get("logging") == "none"  # never on the console


def test_bad_config_registers_nothing(run_program) -> None:
    with pytest.raises(SystemExit, match=r"control_plane\.count: 4 is even"):
        run_program(control_planes="4")


@pytest.mark.parametrize(
    "sizes",
    [
        "",
        "control_plane: {count: 1}\nworkers: {count: 0}\n",
        "control_plane: {count: 1}\nworkers: {count: 1}\n",
        "control_plane: {count: 5}\nworkers: {count: 1}\n",
        "kubernetes: {enabled: false}\n",
    ],
    ids=["default", "1+0", "1+1", "5+1", "machines only"],
)
def test_lab_plan_and_the_program_agree(run_program, tmp_path, capsys, sizes) -> None:
    """`lab plan --format json` prints exactly the steps the program registers, in its order."""
    g = run_program(sizes)
    assert cli.main(["plan", "--format", "json", "--config", str(tmp_path / "cluster.yaml")]) == 0
    planned = json.loads(capsys.readouterr().out)["steps"]
    assert [s["step"] for s in planned] == g.outputs["join_order"]
    commands = set(g.named("command:local:Command")) | set(g.named("command:remote:Command"))
    steps = {c for c in commands if not c.endswith("-snapshots")} - {"kubeconfig"}
    assert steps == {s["step"] for s in planned}
    for s in planned:
        assert chain_deps(g, s["step"]) == set(s["after"]), s["step"]
        if s["kind"] in ("init", "join"):  # Step.makes_machine
            assert chain_deps(g, f"{s['node']}-domain") == set(s["boot_after"]), s["step"]


def test_the_domain_type_reaches_every_domain(run_program) -> None:
    g = run_program("libvirt: {domain_type: qemu}\n")
    domains = g.named("libvirt:index/domain:Domain")
    assert domains and {g.input(d, "type") for d in domains} == {"qemu"}


@pytest.mark.parametrize(
    ("running", "configured", "refusal"),
    [
        ("1.36.3", "1.34.4", r"kubernetes\.version 1\.34\.4 is older than the cluster's 1\.36\.3"),
        (
            "1.35.4",
            "1.37.2",
            r"kubernetes\.version 1\.37\.2 is more than one minor version past the cluster's"
            r" 1\.35\.4: .* upgrade to 1\.36\.3 first",
        ),
        ("1.36.3", "1.37.2", r"the node image of 1\.37\.2 is not built .* run `make image`"),
    ],
)
def test_a_version_kubeadm_cannot_reach_registers_nothing(
    run_program, tmp_path, monkeypatch, running, configured, refusal
) -> None:
    monkeypatch.chdir(tmp_path)  # the project root, whose .lab/images has no image built
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "kubernetes-version").write_text(running + "\n")
    with pytest.raises(SystemExit, match=refusal):
        run_program(f"kubernetes: {{version: {configured}}}\n")


def test_a_machine_takes_the_labs_snapshots_with_it(run_program, tmp_path) -> None:
    """libvirt refuses to delete a machine with snapshots, and a lab snapshot needs every
    machine: each machine has a resource, deleted before it (and replaced with it), whose delete
    drops them."""
    g = run_program()
    tail = f"--config {tmp_path / 'cluster.yaml'} --stack dev"
    for node in ("cp1", "cp2", "cp3", "worker1"):
        r = g.resources[f"{node}-snapshots"]
        assert g.input(f"{node}-snapshots", "delete") == (
            f".venv/bin/lab snapshot delete --machine {node} {tail}"
        )
        assert g.input(f"{node}-snapshots", "create") is None
        assert r.delete_before_replace and g.input(f"{node}-snapshots", "triggers")
