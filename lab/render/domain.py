"""What the lab changes in the domain XML the libvirt provider writes: one CPU socket, disks
that do not wait on the host's disk for a guest's flush, and a read-only seed ISO.

libvirt gives a domain of N vCPUs N sockets of one core each. A Linux guest on a CPU that does
not say its TSC is constant (qemu's default model under software emulation says nothing) and is
not Intel's takes TSCs on several sockets to be unsynchronised, and falls back to the HPET for its
clock. Under emulation every HPET read is a system call and an emulated device access: in HA run
14's guests Go's `time.Now()` took 2.4-6.6 µs, against 0.16 µs on the TSC, and a Kubernetes
control plane reads the clock constantly. One socket of N cores, as real hardware is, keeps the
TSC (the kernel's watchdog still moves a TSC calibrated wrong to the HPET).

Every fsync in a guest (etcd syncs its log on every write) becomes flushes of the disk image
on the host: HA run 16's emulated control planes took 51-180 ms per 4 KiB synchronous write, and
etcd logged "slow fdatasync" and lost its leader to missed heartbeats. qemu's cache mode
`unsafe` completes a guest's flush at once: what the guest wrote is already in the host's page
cache, so a guest that crashes or is destroyed (`virsh destroy`) loses nothing it synced; only
the host crashing can, and a lab is rebuilt by `pulumi up`, not recovered.

The cloud-init seed ISO, which the provider attaches as a writable raw disk, is made read-only:
libvirt takes an internal snapshot of a running guest (`lab snapshot`) only when every writable
disk is qcow2, and skips read-only ones ("internal snapshot for disk vdb unsupported for storage
type raw" otherwise, libvirt 9.0).

The provider applies an XSLT with xsltproc on the host that runs Pulumi; the stylesheet adds the
topology to the domain's <cpu>, or adds a <cpu> with only the topology (qemu's default model),
and sets the cache mode of each disk's driver.
"""

from __future__ import annotations

import shutil

XSLT_TOOL_MISSING = (
    "xsltproc is missing: the libvirt provider runs it on every guest's domain XML (one CPU"
    " socket, the disks' cache mode); apt install xsltproc (`make up` does)"
)

DOMAIN_XSLT = """\
<?xml version="1.0"?>
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output omit-xml-declaration="yes" indent="yes"/>
  <xsl:variable name="topology">
    <topology sockets="1" dies="1" cores="{normalize-space(/domain/vcpu)}" threads="1"/>
  </xsl:variable>
  <xsl:template match="node()|@*">
    <xsl:copy><xsl:apply-templates select="node()|@*"/></xsl:copy>
  </xsl:template>
  <xsl:template match="/domain/cpu">
    <xsl:copy>
      <xsl:apply-templates select="@*|node()[not(self::topology)]"/>
      <xsl:copy-of select="$topology"/>
    </xsl:copy>
  </xsl:template>
  <xsl:template match="/domain/devices/disk[@device='disk']/driver">
    <xsl:copy>
      <xsl:apply-templates select="@*[name() != 'cache']"/>
      <xsl:attribute name="cache">unsafe</xsl:attribute>
      <xsl:apply-templates select="node()"/>
    </xsl:copy>
  </xsl:template>
  <xsl:template match="/domain/devices/disk[@device='disk'][driver/@type='raw'][not(readonly)]">
    <xsl:copy>
      <xsl:apply-templates select="node()|@*"/>
      <readonly/>
    </xsl:copy>
  </xsl:template>
  <xsl:template match="/domain[not(cpu)]">
    <xsl:copy>
      <xsl:apply-templates select="node()|@*"/>
      <cpu><xsl:copy-of select="$topology"/></cpu>
    </xsl:copy>
  </xsl:template>
</xsl:stylesheet>
"""


def xslt_tool() -> str | None:
    return shutil.which("xsltproc")
