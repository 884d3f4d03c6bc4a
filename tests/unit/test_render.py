"""Rendered cloud-init and kubeadm files: checked by cloud-init's own schema and by content."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from lab import keys, releases
from lab.config import LabConfig, parse_config
from lab.render import cloudinit, domain, endpoint, flannel, kubeadm
from lab.topology import Node, Topology, build_topology

# What `lab join` fetches from cp1 before each attempt; any well-formed values do here.
CREDS = {"token": "abcdef.0123456789abcdef", "ca_cert_hash": "sha256:" + "0" * 64}


@pytest.fixture
def lab(tmp_path: Path) -> tuple[LabConfig, Topology, Path]:
    cfg = parse_config({"state_dir": str(tmp_path)}, "test")
    return cfg, build_topology(cfg), tmp_path


def render(cfg: LabConfig, topo: Topology, state: Path, node: Node) -> str:
    user_key = keys.ensure_user_key(state / "ssh" / "id_ed25519")
    host_key = keys.ensure_host_key(state, node.name)
    return cloudinit.user_data(
        cfg, topo, node, user_key=user_key, host_key=host_key, domain_type="qemu"
    )


@pytest.mark.parametrize("node", ["cp1", "cp2", "worker1"])
def test_user_data_passes_cloud_inits_own_schema(lab, node: str, tmp_path: Path) -> None:
    cloud_init = shutil.which("cloud-init")
    assert cloud_init, "cloud-init is missing: `make test-unit` installs it"
    cfg, topo, state = lab
    path = tmp_path / f"{node}.yaml"
    path.write_text(render(cfg, topo, state, topo.node(node)))
    out = subprocess.run([cloud_init, "schema", "-c", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Valid cloud-config" in out.stdout


def test_cloud_inits_schema_check_does_reject_bad_user_data(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("#cloud-config\npackages: 3\n")
    out = subprocess.run(["cloud-init", "schema", "-c", str(bad)], capture_output=True, text=True)
    assert out.returncode != 0


def test_user_data_sets_node_identity_user_and_pinned_host_key(lab) -> None:
    cfg, topo, state = lab
    doc = yaml.safe_load(render(cfg, topo, state, topo.node("cp2")))
    assert doc["hostname"] == "cp2"
    assert doc["users"][0]["name"] == "lab"
    assert doc["users"][0]["ssh_authorized_keys"] == [
        (state / "ssh" / "id_ed25519.pub").read_text().strip()
    ]
    assert doc["ssh_keys"]["ed25519_public"] == keys.pinned_host_key(state, "cp2")
    assert doc["ssh_pwauth"] is False
    cmds = "\n".join(doc["runcmd"])
    assert "10.30.0.12 cp2.lab.local cp2" in cmds  # its own name on its lab address
    assert "cp3" not in cmds  # other nodes resolve through the network's DNS


def test_user_data_only_configures(lab) -> None:
    """The node image has everything: cloud-init installs, updates and downloads nothing."""
    cfg, topo, state = lab
    for name in ("cp1", "worker1"):
        text = render(cfg, topo, state, topo.node(name))
        doc = yaml.safe_load(text)
        assert not {"packages", "package_update", "package_upgrade", "apt"} & set(doc)
        assert not any(w in text for w in ("apt-get", "curl", "http://", "https://"))


def test_only_cp1_carries_kubeadms_patches_and_flannel_and_no_seed_names_a_version(lab) -> None:
    cfg, topo, state = lab
    paths = {
        n: [
            f["path"]
            for f in yaml.safe_load(render(cfg, topo, state, topo.node(n))).get("write_files", [])
        ]
        for n in ("cp1", "cp2", "worker1")
    }
    patches = list(kubeadm.emulated_patches("qemu"))  # the fixture's guests are emulated
    assert paths["cp1"] == [*patches, flannel.MANIFEST_PATH]
    assert paths["cp2"] == paths["worker1"] == []
    # lab init writes kubeadm's configuration: a changed version changes no seed (no machine).
    for n in ("cp1", "cp2", "worker1"):
        assert cfg.kubernetes.version not in render(cfg, topo, state, topo.node(n))


def test_flannel_runs_the_images_own_flanneld_with_the_pod_cidr() -> None:
    cfg = parse_config({"kubernetes": {"pod_cidr": "10.200.0.0/16"}}, "x")
    docs = {d["kind"]: d for d in yaml.safe_load_all(flannel.manifest(cfg, "kvm"))}
    net_conf = json.loads(docs["ConfigMap"]["data"]["net-conf.json"])
    assert net_conf == {"Network": "10.200.0.0/16", "Backend": {"Type": "vxlan"}}
    pod = docs["DaemonSet"]["spec"]["template"]["spec"]
    for c in pod["initContainers"] + pod["containers"]:
        assert (c["image"], c["imagePullPolicy"]) == (flannel.FLANNEL_IMAGE, "Never")
    assert pod["hostNetwork"] is True
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert (env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]) == (
        "10.30.0.10",
        "8443",
    )
    assert pod["containers"][0]["args"] == ["--iptables-resync=5"]  # flanneld's own default


def test_emulated_flanneld_checks_its_iptables_rules_once_a_minute() -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all(flannel.manifest(LabConfig(), "qemu"))}
    container = docs["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["--iptables-resync=60"]


def test_flannel_image_tag_is_the_version_the_image_builds() -> None:
    go_mod = (Path(__file__).parents[2] / "image" / "go" / "flannel" / "go.mod").read_text()
    assert f"github.com/flannel-io/flannel {flannel.FLANNEL_VERSION}\n" in go_mod


def test_every_release_has_its_modules_pinned_and_the_default_is_the_newest() -> None:
    go = Path(__file__).parents[2] / "image" / "go"
    for r in releases.releases().values():
        for modfile, module, version in (
            (go / "kubernetes" / f"v{r.kubernetes}.mod", "k8s.io/kubernetes", f"v{r.kubernetes}"),
            (go / "etcd" / f"v{r.etcd}.mod", "go.etcd.io/etcd/server/v3", f"v{r.etcd}"),
            (go / "coredns" / f"{r.coredns}.mod", "github.com/coredns/coredns", r.coredns),
        ):
            assert f"require {module} {version}\n" in modfile.read_text(), modfile
            assert modfile.with_suffix(".sum").is_file(), modfile
    assert LabConfig().kubernetes.version == max(releases.releases(), key=releases.patch_key)


def test_network_config_is_static_on_the_lab_bridge(lab) -> None:
    cfg, topo, _ = lab
    doc = yaml.safe_load(cloudinit.network_config(cfg, topo.node("worker2")))
    nic = doc["ethernets"][cloudinit.INTERFACE]
    assert nic["match"] == {"macaddress": "52:54:00:1e:00:16"}
    assert nic["addresses"] == ["10.30.0.22/24"]
    assert nic["routes"] == [{"to": "0.0.0.0/0", "via": "10.30.0.1"}]


def test_init_configuration_advertises_the_lab_address(lab) -> None:
    cfg, topo, _ = lab
    init, cluster = yaml.safe_load_all(kubeadm.init_configuration(cfg, topo.first, "kvm"))
    assert init["apiVersion"] == cluster["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert init["localAPIEndpoint"]["advertiseAddress"] == "10.30.0.11"
    assert init["nodeRegistration"]["kubeletExtraArgs"] == [
        {"name": "node-ip", "value": "10.30.0.11"}
    ]
    assert cluster["controlPlaneEndpoint"] == "10.30.0.10:8443"  # the VIP, haproxy's port
    assert cluster["kubernetesVersion"] == "v1.37.2"
    # kubeadm runs exactly the etcd and CoreDNS the image holds (image/versions.tsv).
    assert cluster["etcd"]["local"]["imageTag"] == "3.7.0-0"
    assert cluster["dns"]["imageTag"] == "v1.14.6"
    assert cluster["networking"]["podSubnet"] == "10.244.0.0/16"
    assert cluster["apiServer"]["certSANs"] == ["10.30.0.10"]
    assert "timeouts" not in init and "extraArgs" not in cluster["etcd"]["local"]  # KVM: defaults
    assert "featureGates" not in cluster


def test_emulated_guests_get_longer_timeouts_and_a_calmer_etcd(lab) -> None:
    """Under domain type qemu, kubeadm's default timeouts fail a control-plane join after ~190 s
    and etcd's default election timeout churns: both are raised, for init and join alike."""
    cfg, topo, _ = lab
    init, cluster = yaml.safe_load_all(kubeadm.init_configuration(cfg, topo.first, "qemu"))
    assert init["timeouts"]["etcdAPICall"] == "20m0s"
    assert init["timeouts"]["upgradeManifests"] == "20m0s"
    args = {a["name"]: a["value"] for a in cluster["etcd"]["local"]["extraArgs"]}
    assert args == {"heartbeat-interval": "500", "election-timeout": "5000"}
    for component in ("controllerManager", "scheduler"):
        flags = {a["name"]: a["value"] for a in cluster[component]["extraArgs"]}
        assert flags["leader-elect-renew-deadline"] == "40s"
    flags = {a["name"]: a["value"] for a in cluster["apiServer"]["extraArgs"]}
    assert flags["etcd-healthcheck-timeout"] == "30s"
    # 1.35 locks ControlPlaneKubeletLocalMode on and 1.36 removes it: kubeadm refuses to be told
    assert "featureGates" not in cluster
    # up to 1.34, a joining control plane's kubelet bootstraps through the endpoint
    older = parse_config({"kubernetes": {"version": "1.34.4"}}, "x")
    _, cluster = yaml.safe_load_all(kubeadm.init_configuration(older, topo.first, "qemu"))
    assert cluster["featureGates"] == {"ControlPlaneKubeletLocalMode": False}
    join = yaml.safe_load(
        kubeadm.join_configuration(
            cfg, topo.node("cp2"), certificate_key="k" * 64, domain_type="qemu", **CREDS
        )
    )
    assert join["timeouts"] == kubeadm.EMULATED_TIMEOUTS
    assert join["patches"] == init["patches"] == {"directory": kubeadm.PATCHES_DIR}
    # every kubelet gathers its container statistics once a minute, not every 10 s
    for registration in (init["nodeRegistration"], join["nodeRegistration"]):
        kubelet = {a["name"]: a["value"] for a in registration["kubeletExtraArgs"]}
        assert kubelet["housekeeping-interval"] == "1m0s" and "node-ip" in kubelet


def test_a_one_vcpu_control_plane_passes_kubeadms_cpu_check_and_a_two_vcpu_one_keeps_it(
    tmp_path: Path,
) -> None:
    cfg = parse_config({"state_dir": str(tmp_path), "control_plane": {"cpus": 1}}, "test")
    topo = build_topology(cfg)
    init, _ = yaml.safe_load_all(kubeadm.init_configuration(cfg, topo.first, "qemu"))
    assert init["nodeRegistration"]["ignorePreflightErrors"] == ["NumCPU"]
    cp2 = yaml.safe_load(
        kubeadm.join_configuration(
            cfg, topo.node("cp2"), certificate_key="k" * 64, domain_type="qemu", **CREDS
        )
    )
    assert cp2["nodeRegistration"]["ignorePreflightErrors"] == ["NumCPU"]
    default = parse_config({"state_dir": str(tmp_path)}, "test")
    cp1 = build_topology(default).first
    init, _ = yaml.safe_load_all(kubeadm.init_configuration(default, cp1, "qemu"))
    assert "ignorePreflightErrors" not in init["nodeRegistration"]


def test_emulated_control_planes_get_slower_probes_on_the_probes_they_have_and_one_coredns() -> (
    None
):
    """A strategic-merge patch that adds a probe a pod lacks would leave it without a handler:
    each pod's patch touches only the probes kubeadm gives it. CoreDNS's sets one replica."""
    assert kubeadm.emulated_patches("kvm") == {}
    patches = {
        path.rsplit("/", 1)[1]: yaml.safe_load(text)
        for path, text in kubeadm.emulated_patches("qemu").items()
    }
    assert set(patches) == {
        "etcd+strategic.yaml",
        "kube-apiserver+strategic.yaml",
        "kube-controller-manager+strategic.yaml",
        "kube-scheduler+strategic.yaml",
        "corednsdeployment+strategic.yaml",
    }
    assert patches["corednsdeployment+strategic.yaml"] == {"spec": {"replicas": 1}}
    etcd = patches["etcd+strategic.yaml"]["spec"]["containers"][0]
    assert etcd["name"] == "etcd" and "readinessProbe" not in etcd
    assert etcd["livenessProbe"] == {
        "timeoutSeconds": 60,
        "periodSeconds": 30,
        "failureThreshold": 20,
    }
    assert etcd["startupProbe"] == {"timeoutSeconds": 60, "periodSeconds": 30}
    api = patches["kube-apiserver+strategic.yaml"]["spec"]["containers"][0]
    assert {"livenessProbe", "readinessProbe", "startupProbe"} <= set(api)


def test_join_configuration_for_a_control_plane_and_a_worker(lab) -> None:
    cfg, topo, _ = lab
    cp = yaml.safe_load(
        kubeadm.join_configuration(
            cfg, topo.node("cp3"), certificate_key="k" * 64, domain_type="kvm", **CREDS
        )
    )
    assert cp["kind"] == "JoinConfiguration"
    assert cp["discovery"]["bootstrapToken"] == {
        "apiServerEndpoint": "10.30.0.10:8443",
        "token": CREDS["token"],
        "caCertHashes": [CREDS["ca_cert_hash"]],
    }
    assert cp["controlPlane"]["localAPIEndpoint"]["advertiseAddress"] == "10.30.0.13"
    assert cp["controlPlane"]["certificateKey"] == "k" * 64
    worker = yaml.safe_load(
        kubeadm.join_configuration(
            cfg, topo.node("worker1"), certificate_key=None, domain_type="kvm", **CREDS
        )
    )
    assert "controlPlane" not in worker
    with pytest.raises(ValueError, match="cp3 is a control plane"):
        kubeadm.join_configuration(
            cfg, topo.node("cp3"), certificate_key=None, domain_type="kvm", **CREDS
        )


def test_haproxy_config_lists_every_control_plane_and_passes_haproxys_own_check(
    lab, tmp_path: Path
) -> None:
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    assert Path(haproxy).is_file(), "haproxy is missing: `make test-unit` installs it"
    cfg, topo, _ = lab
    for domain_type in ("kvm", "qemu"):
        text = endpoint.haproxy_cfg(cfg, list(topo.control_planes), domain_type)
        (tmp_path / "haproxy.cfg").write_text(text)
        out = subprocess.run(
            [haproxy, "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True
        )
        assert out.returncode == 0, out.stdout + out.stderr
    assert "bind *:8443" in text
    assert "timeout check 60s" in text  # emulated API servers answer slowly
    assert "uri /readyz?exclude=etcd&exclude=etcd-readiness" in text  # and fail etcd's 2 s check
    servers = [ln.split()[1:3] for ln in text.splitlines() if ln.strip().startswith("server ")]
    assert servers == [
        ["cp1", "10.30.0.11:6443"],
        ["cp2", "10.30.0.12:6443"],
        ["cp3", "10.30.0.13:6443"],
    ]


def test_keepalived_prefers_cp1_and_a_failing_check_drops_below_every_healthy_node(lab) -> None:
    """cp1 200, cp2 199, cp3 198; a failing check subtracts 50: 150 < 194 (cp7, the lowest)."""
    cfg, topo, _ = lab
    priorities = [endpoint.priority(n) for n in topo.control_planes]
    assert priorities == [200, 199, 198]
    lowest_healthy = max(priorities) - 6  # cp7's, with the 7 control planes the config allows
    assert max(priorities) + endpoint.CHECK_WEIGHT < lowest_healthy
    conf = endpoint.keepalived_conf(cfg, topo.node("cp2"), "eth0", "kvm")
    assert "priority 199" in conf and "10.30.0.10/24 dev eth0" in conf
    assert f'script "{endpoint.CHECK_SCRIPT}"' in conf and "interval 3\n" in conf


def test_an_emulated_control_plane_checks_its_endpoint_less_often(lab) -> None:
    """A bash process every 3 s was 13 CPU s a minute of an emulated control plane (HA run 12)."""
    cfg, topo, _ = lab
    assert "interval 10\n" in endpoint.keepalived_conf(cfg, topo.node("cp1"), "eth0", "qemu")


def test_the_endpoint_check_asks_haproxy_whether_an_api_server_is_up(tmp_path: Path) -> None:
    """The check script against a stand-in of haproxy's monitor page: 200 passes, 503 fails."""
    for status, passes in (("200 OK", True), ("503 Service Unavailable", False)):
        with socket.create_server(("127.0.0.1", 0)) as server:
            port = server.getsockname()[1]

            def answer(server: socket.socket = server, status: str = status) -> None:
                conn, _ = server.accept()
                with conn:
                    conn.recv(1024)
                    conn.sendall(f"HTTP/1.0 {status}\r\n\r\n".encode())

            threading.Thread(target=answer, daemon=True).start()
            script = endpoint.check_script().replace(f"/{endpoint.MONITOR_PORT}", f"/{port}")
            run = subprocess.run(["bash", "-c", script], timeout=10)
        assert (run.returncode == 0) is passes, status


@pytest.mark.parametrize(
    "cpu",
    ["", '<cpu mode="host-passthrough"><topology sockets="3" cores="1" threads="1"/></cpu>'],
)
def test_every_guest_gets_one_cpu_socket_disks_with_cache_unsafe_and_a_read_only_seed(
    cpu: str, tmp_path: Path
) -> None:
    """The stylesheet, run by xsltproc as the libvirt provider runs it, on the domain XML the
    provider writes (libvirt's default: one socket per vCPU) and on one with a CPU mode; its
    disks (image and cloud-init ISO) as the provider writes them, the CD-ROM left alone."""
    assert domain.xslt_tool() is not None, domain.XSLT_TOOL_MISSING
    (tmp_path / "domain.xsl").write_text(domain.DOMAIN_XSLT)
    disks = (
        '<disk type="volume" device="disk"><driver name="qemu" type="qcow2"/></disk>'
        '<disk type="volume" device="disk"><driver name="qemu" type="raw" cache="none"/></disk>'
        '<disk type="file" device="cdrom"><driver name="qemu" type="raw"/></disk>'
    )
    (tmp_path / "domain.xml").write_text(
        f"<domain><name>cp1</name><vcpu>3</vcpu>{cpu}<devices>{disks}</devices></domain>"
    )
    argv = ["xsltproc", "--nonet", str(tmp_path / "domain.xsl"), str(tmp_path / "domain.xml")]
    out = ET.fromstring(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    [topology] = out.findall("cpu/topology")
    assert topology.attrib == {"sockets": "1", "dies": "1", "cores": "3", "threads": "1"}
    assert out.find("cpu").attrib == ({"mode": "host-passthrough"} if cpu else {})
    # the seed ISO read-only, so libvirt can snapshot the running guest (lab snapshot)
    readonly = [d.find("readonly") is not None for d in out.findall("devices/disk")]
    assert readonly == [False, True, False]
    drivers = [d.attrib for d in out.findall("devices/disk/driver")]
    assert drivers == [
        {"name": "qemu", "type": "qcow2", "cache": "unsafe"},
        {"name": "qemu", "type": "raw", "cache": "unsafe"},
        {"name": "qemu", "type": "raw"},
    ]


def test_the_upgrade_pulls_nothing_and_keeps_the_control_planes_patches(lab) -> None:
    cfg, topo, _ = lab
    cp = yaml.safe_load(kubeadm.upgrade_configuration(cfg, topo.first, "qemu"))
    assert cp["kind"] == "UpgradeConfiguration"
    assert cp["plan"]["kubernetesVersion"] == cp["apply"]["kubernetesVersion"] == "v1.37.2"
    assert cp["apply"]["imagePullPolicy"] == cp["node"]["imagePullPolicy"] == "Never"
    assert cp["apply"]["patches"] == cp["node"]["patches"] == {"directory": kubeadm.PATCHES_DIR}
    # kubeadm's health-check Job has a fixed 60 s, too short for an emulated pod's start
    assert cp["plan"]["ignorePreflightErrors"] == cp["apply"]["ignorePreflightErrors"]
    assert cp["apply"]["ignorePreflightErrors"] == ["CreateJob"]
    assert cp["timeouts"]["upgradeManifests"] == "20m0s"
    worker = yaml.safe_load(kubeadm.upgrade_configuration(cfg, topo.node("worker1"), "qemu"))
    assert "patches" not in worker["node"]
    kvm = yaml.safe_load(kubeadm.upgrade_configuration(cfg, topo.first, "kvm"))
    assert "ignorePreflightErrors" not in kvm["apply"] and "timeouts" not in kvm
