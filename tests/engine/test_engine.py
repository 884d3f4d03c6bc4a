"""The program under the real engine: preview of the dev stack, and up / up again /
destroy of a machines-only stack against a real libvirtd in a test network namespace.
See conftest.py for how libvirtd is isolated. The guest image is an empty qcow2 made
here with qemu-img: the domain starts (firmware only), no OS boots, no traffic leaves
the namespace."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from lab.config import load_config
from lab.libvirtd import for_lab
from lab.preflight import libvirt_socket_problem
from lab.topology import Step, build_topology, chain_plan

from .conftest import ROOT, require_engine


def urn_name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def in_plan_order(names: list[str], plan: list[Step]) -> bool:
    """Every step of the plan is there, each after the steps it waits for (workers, which join
    in parallel, may come in any order among themselves)."""
    at = {name: i for i, name in enumerate(names)}
    return all(s.name in at and all(at[b] < at[s.name] for b in s.after) for s in plan)


@pytest.mark.parametrize("counts", [{}, {"lab:control_planes": "1", "lab:workers": "1"}])
def test_preview_of_the_dev_config_shows_machines_and_the_chain_in_plan_order(
    libvirtd, make_stack, tmp_path, counts
):
    """The dev stack's cluster (the shipped 3 + 2) and the small 1 + 1 lab, previewed by the real
    engine and the built providers: the network, every machine, and every step of the join
    chain, registered in plan order. An empty image stands in for the node image: a preview
    boots nothing."""
    image = tmp_path / "image.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(image), "64M"], check=True)
    dev = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text()).get("config", {})
    config = {k: str(v) for k, v in dev.items() if k != "libvirt:uri"} | counts
    config |= {"libvirt:uri": libvirtd.uri, "lab:image": str(image)}
    stack = make_stack("preview", config)

    preview = json.loads(stack.pulumi("preview", "--json", timeout=600).stdout)
    steps = preview["steps"]
    created = {(s["urn"].split("::")[-2].split("$")[-1], urn_name(s["urn"])) for s in steps}
    assert ("lab:libvirt:Network", "lab-network") in created
    assert ("libvirt:index/network:Network", "network") in created
    assert ("libvirt:index/volume:Volume", "base-image") in created
    overrides = {k.removeprefix("lab:"): v for k, v in config.items() if k.startswith("lab:")}
    cfg = load_config(ROOT / "config" / "cluster.yaml", overrides)
    topo = build_topology(cfg)
    for node in topo.nodes:
        assert ("lab:libvirt:Machine", node.name) in created, node.name
        assert ("libvirt:index/domain:Domain", f"{node.name}-domain") in created, node.name
        assert ("libvirt:index/volume:Volume", f"{node.name}-cloudinit") in created
    assert all(s["op"] == "create" for s in steps if s["urn"].endswith("-domain"))
    plan = chain_plan(cfg)  # the joins, then the upgrade's steps (no-ops on a new lab)
    commands = [
        urn_name(s["urn"])
        for s in steps
        if s["urn"].split("::")[-2].endswith(("command:local:Command", "command:remote:Command"))
    ]
    assert in_plan_order(commands, plan)
    # What a user reads: the chain's steps in plan order, and the join_order output.
    text = stack.pulumi("preview", timeout=600).stdout
    shown = [
        line.split()[2] for line in text.splitlines() if "command:" in line and "create" in line
    ]
    assert in_plan_order(shown, plan)
    outputs = text[text.index("Outputs:") :]
    assert "join_order" in outputs and all(f'"{step.name}"' in outputs for step in plan)


def test_machines_only_up_again_and_destroy(libvirtd, make_stack, tmp_path):
    image = tmp_path / "image.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(image), "64M"], check=True, capture_output=True
    )
    # A cluster.yaml of the test's own: unique names, the pool inside the temp dir.
    cluster = yaml.safe_load((ROOT / "config" / "cluster.yaml").read_text())
    tag = f"et{os.getpid()}"
    cluster["cluster"]["name"] = tag
    cluster["network"]["name"] = tag
    cluster["libvirt"]["pool"] = tag
    cluster["libvirt"]["pool_path"] = str(tmp_path / "pool")
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    stack = make_stack(
        "up",
        {
            "lab:config": str(tmp_path / "cluster.yaml"),
            "lab:control_planes": "1",
            "lab:workers": "0",
            "lab:kubernetes": "false",
            "lab:cp_cpus": "1",
            "lab:cp_memory_mib": "2048",
            "lab:cp_disk_gib": "10",
            "lab:image": str(image),
            "lab:domain_type": "qemu",  # nothing boots: no KVM, which misbehaves on some hosts
            "libvirt:uri": libvirtd.uri,
        },
    )

    stack.pulumi("up", "--yes", "--skip-preview")
    networks = libvirtd.virsh("net-list", "--all", "--name").split()
    pools = libvirtd.virsh("pool-list", "--all", "--name").split()
    domains = libvirtd.virsh("list", "--all", "--name").split()
    assert networks == [tag], networks
    assert pools == [tag], pools
    assert len(domains) == 1, domains
    volumes = libvirtd.virsh("vol-list", tag).split()
    # base image volume, the node's disk on it, and the cloud-init ISO
    assert len([v for v in volumes if v.endswith((".qcow2", ".iso")) or "/" in v]) >= 3, volumes
    assert any(v.endswith(".iso") for v in volumes), f"no cloud-init disk: {volumes}"

    # --expect-no-changes: pulumi exits non-zero (diff in the output) on any change.
    stack.pulumi("up", "--yes", "--skip-preview", "--expect-no-changes", "--diff")
    # A refresh reads every object back, the seed volume too (it downloads nothing: see
    # lab.render.cloudinit.seed_iso), and finds each as it was. The one difference it reports
    # is the provider's: it reads the nodes' DHCP host entries back as DHCP enabled (README,
    # after an interrupted `pulumi up`).
    refresh = stack.pulumi("refresh", "--yes", "--skip-preview", timeout=300).stdout
    diffs = [line.split()[2] for line in refresh.splitlines() if "[diff" in line]
    assert set(diffs) <= {"network"}, refresh

    stack.pulumi("destroy", "--yes", "--skip-preview")
    assert libvirtd.virsh("net-list", "--all", "--name").split() == []
    assert libvirtd.virsh("pool-list", "--all", "--name").split() == []
    assert libvirtd.virsh("list", "--all", "--name").split() == []
    assert not Path(tmp_path / "pool").exists() or not any(Path(tmp_path / "pool").iterdir())


def test_built_engine_reports_versions_and_finds_plugins_locally():
    require_engine()
    env = dict(os.environ, PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION="true")

    def run(*args: str) -> str:
        out = subprocess.run(
            [str(ROOT / "scripts" / "pulumi"), *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, f"pulumi {' '.join(args)}: {out.stdout}{out.stderr}"
        return out.stdout

    assert run("version").strip().startswith("v3.")
    rows = [line.split()[:3] for line in run("plugin", "ls").splitlines()]
    assert ["libvirt", "resource", "0.5.4"] in rows, rows
    assert ["command", "resource", "1.2.1"] in rows, rows
    # upstream's language host answers `pulumi about` (ours could not)
    about = [line.split() for line in run("about").splitlines()]
    assert ["language", "python", "3.259.0"] in about, about


def test_make_preview_as_a_new_user_starts_what_up_would_and_make_down_stops_it(
    make_stack, tmp_path
):
    """`make preview` from a state folder no libvirtd runs for (and, in a fresh clone, no node
    image built): it starts the lab's private libvirtd (where the host runs none), says the image
    is not needed yet, and prints the chain in plan order; `make down` then stops that
    libvirtd."""
    name = f"prev{os.getpid()}"
    config = tmp_path / "cluster.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "cluster": {"name": name},
                "network": {"name": name, "cidr": "10.43.0.0/24"},
                "control_plane": {"count": 1},
                "workers": {"count": 1},
                "libvirt": {"pool": name, "pool_path": str(tmp_path / "pool")},
                "state_dir": str(tmp_path / "state"),
            }
        )
    )
    stack = make_stack("preview-make", {"lab:config": str(config)})
    cfg = load_config(config)
    daemon = for_lab(cfg.state_dir, cfg.cluster.name)
    host_runs_one = libvirt_socket_problem(cfg.libvirt.uri) is None
    assert daemon.pid() is None

    def make(target: str) -> str:
        out = subprocess.run(
            ["make", target, f"STACK={stack.name}"],
            cwd=ROOT,
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        print(f"$ make {target} -> exit {out.returncode}\n{out.stdout}{out.stderr}")
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    try:
        shown = make("preview")
        assert (daemon.pid() is None) == host_runs_one  # its own, only where the host has none
        # A fresh clone has no image yet (`make test` builds it after this tier): the preview
        # goes on without it and says so; with one built here, preflight finds it.
        built = (ROOT / cfg.image_source).is_file()
        said = "the node image and genisoimage are ready" if built else "a preview does not need it"
        assert said in shown, shown
        steps = [line.split()[2] for line in shown.splitlines() if "command:local:" in line]
        assert in_plan_order(steps, chain_plan(cfg)), steps
        make("down")
        assert daemon.pid() is None
    finally:
        if daemon.pid() is not None:
            daemon.stop()
