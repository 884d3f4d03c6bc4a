"""The control-plane endpoint (mode `vip`): keepalived and haproxy on every control plane.

keepalived (VRRP) keeps the VIP on one control plane: cp1 has the highest priority, and a node
whose haproxy does not answer, or has no API server up behind it, drops below every healthy one.
The check only lowers the priority, so before any API server runs (cp1's `kubeadm init`) cp1 still
holds the VIP. haproxy, on every control plane, listens on the endpoint's port and spreads the
connections over every API server that answers /readyz; an API server on a guest that is
restarting or loaded is taken out until it answers again. This is the layout of kubeadm's HA
guide ("keepalived and haproxy"), with both as Debian's packages in the node image and configured
by `lab` over SSH, since haproxy's list of API servers changes when control planes are added.
"""

from __future__ import annotations

from lab.config import API_PORT, LabConfig
from lab.domain_type import DomainType
from lab.topology import Node

KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
CHECK_SCRIPT = "/etc/keepalived/check-endpoint.sh"
HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"
VIRTUAL_ROUTER_ID = 51  # one VRRP group per lab network
MONITOR_PORT = 8404  # haproxy's own health answer, on the node's loopback only
MONITOR_URI = "/healthz"
# Above the largest priority gap (7 control planes: 6), so any healthy node outranks a failing one.
CHECK_WEIGHT = -50


def priority(node: Node) -> int:
    """cp1 200, cp2 199, ...: the VIP stays where it is unless a higher node is healthy."""
    return 201 - int(node.name.removeprefix("cp"))


def check_script() -> str:
    """Exit 0 when haproxy here answers and has an API server to send connections to: what the
    VIP's holder must be able to do. (Its own API server alone would not say that haproxy runs;
    bash, not curl, as the node image has no curl.)"""
    return f"""#!/bin/bash
# keepalived's health check of this control plane (lab/render/endpoint.py)
exec 3<>/dev/tcp/127.0.0.1/{MONITOR_PORT} || exit 1
printf 'GET {MONITOR_URI} HTTP/1.0\\r\\n\\r\\n' >&3
read -r -t 4 status <&3 && [[ $status == *" 200 "* ]]
"""


# Seconds between keepalived's checks. Each check is a bash process: every 3 s it cost an emulated
# control plane 13 CPU seconds a minute (HA run 12). A destroyed VIP holder is noticed by its
# missing VRRP adverts (1 s apart), not by the check, so the VIP moves as fast either way.
CHECK_INTERVAL: dict[DomainType, int] = {"kvm": 3, "qemu": 10}


def keepalived_conf(cfg: LabConfig, node: Node, interface: str, domain_type: DomainType) -> str:
    return f"""# keepalived on {node.name}: the lab's control-plane VIP (lab/render/endpoint.py)
global_defs {{
    router_id {node.name}
    enable_script_security
    script_user root
}}

vrrp_script endpoint_check {{
    script "{CHECK_SCRIPT}"
    interval {CHECK_INTERVAL[domain_type]}
    timeout 5
    fall 3
    rise 2
    weight {CHECK_WEIGHT}
}}

vrrp_instance lab_endpoint {{
    state BACKUP
    interface {interface}
    virtual_router_id {VIRTUAL_ROUTER_ID}
    priority {priority(node)}
    advert_int 1
    virtual_ipaddress {{
        {cfg.endpoint_address}/{cfg.network.cidr.prefixlen} dev {interface}
    }}
    track_script {{
        endpoint_check
    }}
}}
"""


# How haproxy checks an API server: (path, seconds between checks, seconds a check may take,
# failures before it is taken out). /readyz is the API server's answer for load balancers (it
# fails while the server shuts down). Under emulation its etcd checks (2 s each) failed for
# minutes while the API server went on serving (measured: haproxy took the only one out, and
# every client got EOF), and it answered slower than its probes' 15 s (kubeadm.py, SLOW_PROBE):
# there the check leaves etcd out and is as patient as the probes.
HEALTH_CHECKS: dict[DomainType, tuple[str, int, int, int]] = {
    "kvm": ("/readyz", 5, 10, 3),
    "qemu": ("/readyz?exclude=etcd&exclude=etcd-readiness", 10, 60, 6),
}


def haproxy_cfg(cfg: LabConfig, control_planes: list[Node], domain_type: DomainType) -> str:
    """haproxy in front of every control plane's API server; /readyz (anonymous in kubeadm's
    clusters) decides which take connections. Long timeouts: watches stay open for minutes."""
    path, inter, timeout, fall = HEALTH_CHECKS[domain_type]
    servers = "".join(
        f"    server {n.name} {n.address}:{API_PORT} check check-ssl verify none\n"
        for n in control_planes
    )
    return f"""# haproxy on a control plane: the lab's API endpoint (lab/render/endpoint.py)
global
    log stdout format raw local0 notice
    maxconn 2000

defaults
    log global
    timeout connect 10s
    timeout client 1h
    timeout server 1h
    timeout check {timeout}s

frontend apiserver
    mode tcp
    option tcplog
    bind *:{cfg.endpoint_port}
    default_backend apiservers

# keepalived's check: 200 while at least one API server is up, 503 when none is
frontend endpoint_health
    mode http
    bind 127.0.0.1:{MONITOR_PORT}
    monitor-uri {MONITOR_URI}
    monitor fail if {{ nbsrv(apiservers) lt 1 }}

backend apiservers
    mode tcp
    option httpchk
    http-check send meth GET uri {path}
    http-check expect status 200
    balance roundrobin
    default-server inter {inter}s downinter {inter}s rise 2 fall {fall}
{servers}"""
