"""k8s-libvirt-lab: config/cluster.yaml (+ stack overrides) -> libvirt machines -> join chain."""

from pathlib import Path

import pulumi

from lab.config import OVERRIDES, ConfigError, load_config
from lab.infra.chain import LabInvocation
from lab.infra.kubernetes_lab import KubernetesLab
from lab.render.cloudinit import SeedError

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

try:
    k8s_lab = KubernetesLab(cfg, LabInvocation(config_path, pulumi.get_stack()))
except SeedError as e:
    raise SystemExit(f"k8s-libvirt-lab: {e}") from None
pulumi.export("nodes", k8s_lab.nodes)
pulumi.export("join_order", k8s_lab.join_order)
if k8s_lab.kubeconfig is not None:
    pulumi.export("kubeconfig", k8s_lab.kubeconfig)
