"""k8s-libvirt-lab: config/cluster.yaml (+ stack overrides) -> libvirt machines -> join chain."""

import os
import signal
import sys
from pathlib import Path

import pulumi

from lab import releases
from lab.config import OVERRIDES, ConfigError, load_config
from lab.infra.chain import LabInvocation
from lab.infra.kubernetes_lab import KubernetesLab
from lab.render.cloudinit import SeedError


def _stopped_by_the_engine(signum: int, frame: object) -> None:
    """After a failed step the engine stops this program while it still awaits its resources:
    the language host's Cancel sends SIGINT, and closing the language host sends SIGINT to its
    process group (Pulumi 3.229+; no handler in the SDK or its exec script). Pulumi has already
    reported the failed step; Python's default handler would add KeyboardInterrupt tracebacks
    from wherever the program was. 32 is the language host's "error already reported"."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(32)


if __name__ == "__main__":  # as the language host runs it (tests/program's runpy does not)
    signal.signal(signal.SIGINT, _stopped_by_the_engine)

stack_cfg = pulumi.Config("lab")
config_path = stack_cfg.get("config") or "config/cluster.yaml"
overrides = {key: value for key in OVERRIDES if (value := stack_cfg.get(key)) is not None}
if (uri := pulumi.Config("libvirt").get("uri")) is not None:
    overrides["libvirt_uri"] = uri

try:
    cfg = load_config(Path(config_path), overrides)
except ConfigError as e:
    # Stop before a single resource is registered, with the message and nothing else.
    raise SystemExit(f"k8s-libvirt-lab: invalid configuration\n{e}") from None

if why := releases.change_refusal(cfg.state_dir, cfg.kubernetes.version):
    raise SystemExit(f"k8s-libvirt-lab: {why}")

try:
    k8s_lab = KubernetesLab(cfg, LabInvocation(config_path, pulumi.get_stack()))
except SeedError as e:
    raise SystemExit(f"k8s-libvirt-lab: {e}") from None
pulumi.export("nodes", k8s_lab.nodes)
pulumi.export("join_order", k8s_lab.join_order)
if k8s_lab.kubeconfig is not None:
    pulumi.export("kubeconfig", k8s_lab.kubeconfig)
