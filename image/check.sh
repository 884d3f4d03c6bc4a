#!/usr/bin/env bash
# Boot the built node image once under software emulation (no NIC: nothing leaves the machine)
# with a NoCloud seed that prints what a kubeadm node needs, then powers off; fail unless it is all
# there. `make image-check`; about 2 min here.
# Usage: image/check.sh KUBERNETES_VERSION
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
version=v${1:?usage: image/check.sh KUBERNETES_VERSION}
image=$root/.lab/images/k8s-node-$version.qcow2
[ -f "$image" ] || { echo "image/check.sh: no $image; run make image VERSION=${version#v}" >&2; exit 1; }
images=$(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["containerd_images"]))' \
  "${image%.qcow2}.json")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/user-data" <<'CLOUD'
#cloud-config
runcmd:
  - [sh, -c, 'echo "CHECK kubeadm=$(kubeadm version -o short) containerd=$(systemctl is-active containerd) images=$(ctr -n k8s.io images ls -q | grep -vc ^sha256:) br_netfilter=$(lsmod | grep -c ^br_netfilter) forwarding=$(sysctl -n net.ipv4.ip_forward)" >/dev/ttyS0']
  - [poweroff]
CLOUD
printf 'instance-id: image-check\nlocal-hostname: image-check\n' >"$tmp/meta-data"
genisoimage -quiet -output "$tmp/seed.iso" -volid cidata -joliet -rock "$tmp/user-data" "$tmp/meta-data"
qemu-img create -q -f qcow2 -b "$image" -F qcow2 "$tmp/disk.qcow2"
start=$SECONDS
timeout 600 qemu-system-x86_64 -accel tcg,thread=multi -smp 2 -m 2048 -nographic -no-reboot \
  -drive file="$tmp/disk.qcow2",if=virtio -cdrom "$tmp/seed.iso" -nic none >"$tmp/console.log" 2>&1 || true
line=$(grep -a -o 'CHECK .*' "$tmp/console.log" | tr -d '\r' | head -n1)
want="CHECK kubeadm=$version containerd=active images=$images br_netfilter=1 forwarding=1"
if [ "$line" != "$want" ]; then
  echo "image/check.sh: $image did not boot as a kubeadm node; got '${line:-nothing}', want '$want'" >&2
  tail -n 30 "$tmp/console.log" >&2
  exit 1
fi
echo "image/check.sh: $image boots to a kubeadm node in $((SECONDS - start))s: $line"
