"""libvirt objects: the lab network with its pool and base image, and one Machine per node."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pulumi
import pulumi_libvirt as libvirt

from lab.config import LabConfig
from lab.render.domain import DOMAIN_XSLT
from lab.topology import Node, Topology, machine_name

GIB = 1024**3


def fixed_name(parent: pulumi.Resource) -> pulumi.ResourceOptions:
    """Options for a libvirt object with a name of ours: libvirt refuses a second object of
    that name, so a replacement deletes the old one first (Pulumi's default creates first)."""
    return pulumi.ResourceOptions(parent=parent, delete_before_replace=True)


class LabNetwork(pulumi.ComponentResource):
    """NAT network with static addresses (no DHCP), a storage pool, and the base image volume."""

    def __init__(self, name: str, cfg: LabConfig, topo: Topology, opts: pulumi.ResourceOptions):
        super().__init__("lab:libvirt:Network", name, None, opts)
        child = fixed_name(self)
        prefix = cfg.cluster.name
        self.network = libvirt.Network(
            "network",
            name=cfg.network.name,
            mode="nat",
            domain=cfg.network.domain,
            addresses=[str(cfg.network.cidr)],
            autostart=True,
            dhcp=libvirt.NetworkDhcpArgs(enabled=False),
            dns=libvirt.NetworkDnsArgs(
                enabled=True,
                local_only=True,
                hosts=[
                    libvirt.NetworkDnsHostArgs(hostname=n.name, ip=str(n.address))
                    for n in topo.nodes
                ],
            ),
            opts=child,
        )
        self.pool = libvirt.Pool(
            "pool",
            name=cfg.libvirt.pool,
            type="dir",
            target=libvirt.PoolTargetArgs(path=str(cfg.libvirt.pool_path)),
            opts=child,
        )
        # A volume cannot have both `source` and `size`: the image is a base, nodes grow on it.
        # Machines keep the image they were made from: a changed kubernetes.version names another
        # image, and a new base would replace every disk, machine and join. The version is
        # upgraded in place instead (lab.topology.upgrade_plan).
        self.base = libvirt.Volume(
            "base-image",
            name=f"{prefix}-base.qcow2",
            pool=self.pool.name,
            source=cfg.image_source,
            format="qcow2",
            opts=child.merge(pulumi.ResourceOptions(ignore_changes=["source"])),
        )
        self.register_outputs({"network": self.network.id, "pool": self.pool.id})


class Machine(pulumi.ComponentResource):
    """One node: a disk on the base image, its cloud-init seed volume, and the domain, which
    boots once the resources in `boot_after` are done (lab.topology.Step.boot_after)."""

    def __init__(
        self,
        node: Node,
        net: LabNetwork,
        cfg: LabConfig,
        seed: Path,
        domain_type: str,
        opts: pulumi.ResourceOptions,
        boot_after: Sequence[pulumi.Resource] = (),
    ):
        super().__init__("lab:libvirt:Machine", node.name, None, opts)
        child = fixed_name(self)
        name = machine_name(cfg, node)
        self.disk = libvirt.Volume(
            f"{node.name}-disk",
            name=f"{name}.qcow2",
            pool=net.pool.name,
            base_volume_id=net.base.id,
            size=node.disk_gib * GIB,
            format="qcow2",
            opts=child,
        )
        # The seed ISO the lab wrote (lab.render.cloudinit.seed_iso), uploaded as a plain
        # volume: cloud-init finds it by its label on a second disk.
        self.cloudinit = libvirt.Volume(
            f"{node.name}-cloudinit",
            name=f"{name}-cloudinit.iso",
            pool=net.pool.name,
            source=str(seed),
            format="iso",  # what libvirt reads back from an ISO 9660 file
            opts=child,
        )
        # No wait_for_lease: addresses are static and there is no DHCP; the chain waits for SSH.
        self.domain = libvirt.Domain(
            f"{node.name}-domain",
            name=name,
            type=domain_type,
            vcpu=node.cpus,
            memory=node.memory_mib,
            autostart=True,
            qemu_agent=True,
            # Software emulation has no host CPU to pass through: qemu's own model there.
            cpu=None
            if cfg.libvirt.cpu_mode == "default" or domain_type == "qemu"
            else libvirt.DomainCpuArgs(mode=cfg.libvirt.cpu_mode),
            disks=[
                libvirt.DomainDiskArgs(volume_id=self.disk.id),
                libvirt.DomainDiskArgs(volume_id=self.cloudinit.id),
            ],
            network_interfaces=[
                libvirt.DomainNetworkInterfaceArgs(
                    network_id=net.network.id,
                    mac=node.mac,
                    addresses=[str(node.address)],
                    hostname=node.name,
                    wait_for_lease=False,
                )
            ],
            # Cloud images print to, and some wait for, a serial console.
            consoles=[libvirt.DomainConsoleArgs(type="pty", target_port="0", target_type="serial")],
            # One socket of N cores, so the guest's clock stays on the TSC, and disks whose
            # flushes do not wait on the host's disk (lab.render.domain).
            xml=libvirt.DomainXmlArgs(xslt=DOMAIN_XSLT),
            # With no DHCP lease and no guest agent yet, the provider reads the address back as
            # empty: without this every `pulumi up` would propose an update.
            opts=child.merge(
                pulumi.ResourceOptions(
                    ignore_changes=["networkInterfaces[0].addresses"], depends_on=list(boot_after)
                )
            ),
        )
        self.register_outputs({"domain": self.domain.id, "address": str(node.address)})
