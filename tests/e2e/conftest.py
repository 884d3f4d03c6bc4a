"""e2e tier: a real Kubernetes cluster from `pulumi up`, on the lab's own node image.

The engine tier's private libvirtd (a network namespace of the test's own) runs the guests under
software emulation (domain type qemu); Pulumi runs inside that namespace, where the lab bridge
is, so SSH and `lab` reach the guests. Nothing is a stand-in: real kubeadm, kubelet, etcd,
containerd, flannel and CoreDNS, all from the image `make image` builds. It FAILS, never skips,
when the image, the engine or root is missing.
"""

from __future__ import annotations

from tests.engine.conftest import Libvirtd, Stack, libvirtd

__all__ = ["Libvirtd", "Stack", "libvirtd"]
