"""The kubeadm join chain: one Pulumi resource per step of lab.topology.chain_plan.

Every step is a `lab` command run on this host (cp1-init is `lab init`), the same command a person
would type. Pulumi decides the order; `lab` holds the logic (and the retry).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pulumi
from pulumi_command import local, remote

from lab import keys
from lab.config import LabConfig
from lab.infra.machines import Machine
from lab.topology import Node, Step, Topology, build_topology

# Makes a node's machine, booting once the given resources are done (KubernetesLab's).
MachineFactory = Callable[[Node, Sequence[pulumi.Resource]], Machine]
LAB = ".venv/bin/lab"  # Pulumi.yaml's virtualenv; providers run in the project directory
KUBECONFIG_COMMAND = "sudo cat /etc/kubernetes/admin.conf"  # on cp1, once cp1-init has run
VERSION_VARIABLE = "LAB_KUBERNETES_VERSION"  # an upgrade step's input that the version changes


@dataclass(frozen=True)
class LabInvocation:
    """How the chain calls `lab`: the same config file and stack overrides as this program."""

    config_path: str
    stack: str

    def command(self, *args: str) -> str:
        return shlex.join([LAB, *args, "--config", self.config_path, "--stack", self.stack])


@dataclass(frozen=True)
class StepCommands:
    """What one step's resource (a local.Command, in the project directory) runs: `create`,
    `update` when an input (an upgrade step's version) changes, and `delete` on destroy or a smaller
    count."""

    create: str
    delete: str | None = None
    update: str | None = None


def step_commands(step: Step, cfg: LabConfig, lab: LabInvocation) -> StepCommands:
    """The commands the chain registers for `step`; needs no engine, so a test runs them as is."""
    command = lab.command(*step.lab_args)
    if step.phase == "upgrade":
        # Created with its node, which is made at (or, joining later, brought to) the version:
        # nothing to upgrade, so nothing asked of the guests; a changed version updates it.
        said = (
            f"{step.name}: new, at v{cfg.kubernetes.version} already;"
            f" a changed kubernetes.version runs: lab {shlex.join(step.lab_args)}"
        )
        return StepCommands(shlex.join(["echo", said]), update=command)
    if step.kind == "join" and step.node:
        return StepCommands(command, leave_command(build_topology(cfg).node(step.node), cfg, lab))
    if step.kind == "init":
        return StepCommands(command, lab.command("init", "--forget"))  # forget its version
    return StepCommands(command)


def leave_command(node: Node, cfg: LabConfig, lab: LabInvocation) -> str:
    """A join's delete: `lab leave` with everything it needs about the node, since Pulumi runs
    the stored command after the config may have dropped the node (a smaller count)."""
    return lab.command(
        "leave",
        node.name,
        "--address",
        str(node.address),
        "--role",
        node.role,
        "--host-key",
        keys.pinned_host_key(cfg.state_dir, node.name),
    )


def ssh_connection(
    cfg: LabConfig, address: str, host_key: str, private_key: pulumi.Input[str]
) -> remote.ConnectionArgs:
    """SSH to a node with its pinned host key; keep dialling until it boots (the create timeout
    bounds the wait), as remote.Command retries only the dial, never the command."""
    return remote.ConnectionArgs(
        host=address,
        user=cfg.ssh.user,
        private_key=private_key,
        host_key=host_key,
        dial_error_limit=-1,
        per_dial_timeout=10,
    )


class JoinChain(pulumi.ComponentResource):
    def __init__(
        self,
        cfg: LabConfig,
        steps: list[Step],
        topo: Topology,
        machine: MachineFactory,
        lab: LabInvocation,
        cp1_connection: remote.ConnectionArgs,
        opts: pulumi.ResourceOptions,
    ):
        super().__init__("lab:kubeadm:JoinChain", "join-chain", None, opts)
        self.steps: dict[str, pulumi.Resource] = {}
        for step in steps:
            after: list[pulumi.Resource] = [self.steps[s] for s in step.after]
            triggers: list[pulumi.Input[str]] | None = None
            environment: dict[str, str] | None = None
            if step.makes_machine:
                node = topo.node(str(step.node))
                made = machine(node, [self.steps[s] for s in step.boot_after])
                after.append(made)
                triggers = [made.domain.id]  # a rebuilt machine joins again
                # libvirt will not delete a machine that has snapshots; a lab snapshot needs
                # every machine, so the lab's snapshots go with any of them (lab.ops.snapshot).
                local.Command(
                    f"{node.name}-snapshots",
                    delete=lab.command("snapshot", "delete", "--machine", node.name),
                    triggers=triggers,
                    logging=local.Logging.STDOUT_AND_STDERR,
                    opts=pulumi.ResourceOptions(
                        parent=self, depends_on=[made], delete_before_replace=True
                    ),
                )
            elif step.phase == "upgrade":
                # A changed input runs `update`; a changed trigger would replace (create again).
                environment = {VERSION_VARIABLE: cfg.kubernetes.version}
            commands = step_commands(step, cfg, lab)
            self.steps[step.name] = local.Command(
                step.name,
                create=commands.create,
                update=commands.update,
                delete=commands.delete,
                triggers=triggers,
                environment=environment,
                logging=local.Logging.STDOUT_AND_STDERR,
                # A rebuilt machine's join: leave with the old one before joining the new one
                # (the default, create first, would run the join and then the leave of the node).
                opts=pulumi.ResourceOptions(
                    parent=self, depends_on=after, delete_before_replace=True
                ),
            )

        # admin.conf exists once cp1-init has run; it is a secret, never plaintext in state.
        self.kubeconfig = remote.Command(
            "kubeconfig",
            connection=cp1_connection,
            create=KUBECONFIG_COMMAND,
            logging=remote.Logging.NONE,  # the provider would print the admin key as it runs
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[self.steps[s.name] for s in steps if s.kind == "init"],
                additional_secret_outputs=["stdout"],
            ),
        ).stdout
        self.register_outputs({"kubeconfig": self.kubeconfig})
