"""The whole lab as one component: network, machines, and the join chain (unless Kubernetes is
off), which boots each machine when its step's `boot_after` is done."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_libvirt as libvirt

from lab import keys
from lab.config import LabConfig
from lab.domain_type import choose as choose_domain_type
from lab.infra.chain import JoinChain, LabInvocation, ssh_connection
from lab.infra.machines import LabNetwork, Machine
from lab.render import cloudinit
from lab.topology import Node, build_topology, chain_plan


class KubernetesLab(pulumi.ComponentResource):
    def __init__(
        self, cfg: LabConfig, lab: LabInvocation, opts: pulumi.ResourceOptions | None = None
    ):
        # The type token stays "lab:index:Lab": it is part of every resource's URN in state.
        super().__init__("lab:index:Lab", cfg.cluster.name, None, opts)
        topo = build_topology(cfg)
        provider = libvirt.Provider(
            "libvirt", uri=cfg.libvirt.uri, opts=pulumi.ResourceOptions(parent=self)
        )
        child = pulumi.ResourceOptions(parent=self, providers=[provider])
        net = LabNetwork("lab-network", cfg, topo, child)

        domain_type = choose_domain_type(cfg)
        pulumi.log.info(str(domain_type))
        user_key = keys.ensure_user_key(cfg.ssh_key_path)
        # Made before any machine: the chain pins cp1's host key before the chain makes cp1.
        host_keys = {n.name: keys.ensure_host_key(cfg.state_dir, n.name) for n in topo.nodes}

        def machine(node: Node, boot_after: Sequence[pulumi.Resource] = ()) -> Machine:
            # The user data carries the node's private host key: it stays in the state folder,
            # and Pulumi's state holds only the seed's path.
            user_data = cloudinit.user_data(
                cfg,
                topo,
                node,
                user_key=user_key,
                host_key=host_keys[node.name],
                domain_type=domain_type.type,
            )
            seed = cloudinit.seed_iso(cfg, node, user_data)
            return Machine(node, net, cfg, seed, domain_type.type, child, boot_after)

        self.kubeconfig: pulumi.Output[str] | None = None
        steps = chain_plan(cfg)
        if steps:
            first = topo.first
            connection = ssh_connection(
                cfg,
                str(first.address),
                keys.pinned_host_key(cfg.state_dir, first.name),
                pulumi.Output.secret(cfg.ssh_key_path.read_text()),
            )
            chain = JoinChain(
                cfg, steps, topo, machine, lab, connection, pulumi.ResourceOptions(parent=self)
            )
            self.kubeconfig = chain.kubeconfig
        else:
            for node in topo.nodes:
                machine(node)
        self.nodes = {n.name: str(n.address) for n in topo.nodes}
        self.join_order = [s.name for s in steps]
        self.register_outputs({"nodes": self.nodes})
