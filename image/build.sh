#!/usr/bin/env bash
# Build the lab's node image offline, from Debian's packages and Go modules only:
#   1. binaries   kubeadm, kubelet, kubectl, the control-plane servers, kube-proxy, etcd,
#                 CoreDNS, pause, flanneld and flannel's CNI plugin, from the wrapper modules in
#                 image/go (committed go.sum)
#   2. archives   a docker archive per container image, tagged as kubeadm expects them
#   3. rootfs     Debian 13 (mmdebstrap): containerd, runc, CNI plugins, cloud-init, sshd, the
#                 kubelet unit, modules and sysctls kubeadm's preflight wants, our binaries
#   4. disk       a bootable disk (extlinux), the archives imported into containerd's store at
#                 build time (a node pulls and imports nothing), as qcow2 + manifest.json
# Output: .lab/images/k8s-node-v$KUBERNETES.qcow2, manifest.json, and vmlinuz (its kernel).
# Each stage has a stamp (the hash of its inputs): a second run with nothing changed skips all.
#
# Usage: image/build.sh        (root: mmdebstrap, loop devices, chroot)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src=$root/image
out=$root/.lab/images
work=$out/build
bin=$work/bin

# Versions: Kubernetes from the wrapper module; the rest as kubeadm v1.34 expects them
# (cmd/kubeadm/app/constants).
# required DIR MODULE: the version image/go/DIR/go.mod requires of MODULE.
required() { awk -v m="$2" '($1 == "require" && $2 == m) || $1 == m {print ($1 == m ? $2 : $3)}' "$src/go/$1/go.mod"; }
kubernetes=$(required kubernetes k8s.io/kubernetes)
flannel=$(required flannel github.com/flannel-io/flannel)
[ -n "$kubernetes" ] && [ -n "$flannel" ] || { echo "image: no version in image/go/*/go.mod" >&2; exit 1; }
etcd_tag=3.6.5-0
coredns_tag=v1.12.1
pause_tag=3.10.1
suite=trixie
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
image=$out/k8s-node-$kubernetes.qcow2

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  PATH=$PATH:/usr/local/go/bin
fi
export GOFLAGS="-mod=readonly -trimpath" GOTOOLCHAIN=local CGO_ENABLED=0
mkdir -p "$bin" "$work/stamps" "$work/archives"

say() { echo "image: $*"; }
# No documentation, manual pages or translations in the image.
slim=(--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/locale/*')

# inputs_hash PATH...: what decides a stage (files under the paths, and the versions).
inputs_hash() {
  { find "$@" -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    echo "$kubernetes $etcd_tag $coredns_tag $pause_tag $flannel $suite"; } | sha256sum | cut -d' ' -f1
}

# stage NAME FUNCTION INPUT...: run FUNCTION unless its stamp matches the inputs' hash.
stage() {
  local name=$1 fn=$2 hash start
  shift 2
  hash=$(inputs_hash "$@")
  if [ "$(cat "$work/stamps/$name" 2>/dev/null)" = "$hash" ]; then
    say "$name up to date"
    return
  fi
  say "$name ..."
  start=$SECONDS
  rm -f "$work/stamps/$name"
  "$fn"
  echo "$hash" >"$work/stamps/$name"
  say "$name done in $((SECONDS - start))s"
}

build_binaries() {
  local v=${kubernetes#v} k8s_flags=
  local major=${v%%.*} minor=${v#*.}
  minor=${minor%%.*}
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    k8s_flags+=" -X $pkg.gitVersion=$kubernetes -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    k8s_flags+=" -X $pkg.gitTreeState=clean"
  done
  (cd "$src/go/kubernetes" && go build -ldflags "-s -w$k8s_flags" -o "$bin/" \
    k8s.io/kubernetes/cmd/kubeadm k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubectl \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy)
  (cd "$src/go/etcd" && go build -ldflags "-s -w" -o "$bin/etcd" .)
  (cd "$src/go/coredns" && go build -ldflags "-s -w" -o "$bin/coredns" github.com/coredns/coredns)
  (cd "$src/go/pause" && go build -ldflags "-s -w" -o "$bin/pause" .)
  (cd "$src/go/flannel" && go build -ldflags "-s -w" -o "$bin/flanneld" .)
  (cd "$src/go/cni" && go build -ldflags "-s -w" -o "$bin/cni-flannel" \
    github.com/containernetworking/plugins/plugins/meta/flannel)
}

# kube-proxy and flanneld call iptables/nft, conntrack and ipset: their images have a small Debian
# root under the binary. flanneld's image is ours (localhost/...): pods run it with pullPolicy Never.
build_archives() {
  local a=$work/archives r=registry.k8s.io
  mmdebstrap --variant=essential --include=iptables,nftables,conntrack,ipset,kmod \
    "${slim[@]}" "$suite" "$work/proxy-root.tar" "$mirror"
  local server
  for server in kube-apiserver kube-controller-manager kube-scheduler; do
    python3 "$src/archive.py" "$a/$server.tar" "$r/$server:$kubernetes" \
      --file "/usr/local/bin/$server=$bin/$server"
  done
  python3 "$src/archive.py" "$a/kube-proxy.tar" "$r/kube-proxy:$kubernetes" \
    --base "$work/proxy-root.tar" --file "/usr/local/bin/kube-proxy=$bin/kube-proxy"
  python3 "$src/archive.py" "$a/flanneld.tar" "localhost/k8s-libvirt-lab/flanneld:$flannel" \
    --base "$work/proxy-root.tar" --file "/usr/local/bin/flanneld=$bin/flanneld"
  python3 "$src/archive.py" "$a/etcd.tar" "$r/etcd:$etcd_tag" --file "/usr/local/bin/etcd=$bin/etcd"
  python3 "$src/archive.py" "$a/coredns.tar" "$r/coredns/coredns:$coredns_tag" \
    --entrypoint /coredns --file "/coredns=$bin/coredns"
  python3 "$src/archive.py" "$a/pause.tar" "$r/pause:$pause_tag" \
    --entrypoint /pause --file "/pause=$bin/pause"
}

packages=(
  linux-image-cloud-amd64 systemd-sysv systemd-resolved netplan.io cloud-init openssh-server
  qemu-guest-agent sudo ca-certificates extlinux containerd runc containernetworking-plugins
  conntrack socat iptables ebtables ethtool ipset kmod keepalived haproxy
  cloud-guest-utils
)

build_rootfs() {
  local packed
  packed=$(IFS=,; echo "${packages[*]}")
  mmdebstrap --variant=important --include="$packed" "${slim[@]}" \
    --customize-hook="tar -C '$src/rootfs' -c . | tar -C \"\$1\" -x --no-same-owner" \
    --customize-hook="install -m 0755 '$bin/kubeadm' '$bin/kubelet' '$bin/kubectl' \"\$1/usr/bin/\"" \
    --customize-hook="install -m 0755 '$bin/cni-flannel' \"\$1/usr/lib/cni/flannel\"" \
    --customize-hook='chroot "$1" systemctl enable kubelet.service containerd.service' \
    --customize-hook='mkdir -p "$1/etc/containerd" && chroot "$1" containerd config default >"$1/etc/containerd/config.toml"' \
    --customize-hook="sed -i -e 's/SystemdCgroup = false/SystemdCgroup = true/' -e 's#sandbox_image = .*#sandbox_image = \"registry.k8s.io/pause:$pause_tag\"#' \"\$1/etc/containerd/config.toml\"" \
    "$suite" "$work/rootfs.tar" "$mirror"
}

# On any exit: stop the build's containerd, unmount, free the loop device.
cleanup_disk() {
  if [ -f "$mnt/run/build-containerd.pid" ]; then
    kill "$(cat "$mnt/run/build-containerd.pid")" 2>/dev/null || true
  fi
  for m in dev/pts dev proc sys run ""; do
    if mountpoint -q "$mnt/$m"; then umount -l "$mnt/$m" || true; fi
  done
  if [ -n "$loop" ]; then losetup -d "$loop" || true; fi
}
mnt=$work/mnt loop=

build_disk() {
  local raw=$work/disk.raw sock=/run/containerd-image-build
  rm -f "$raw" && truncate -s 4G "$raw"
  echo 'start=2048, type=83, bootable' | sfdisk -q "$raw"
  loop=$(losetup --find --show --offset $((2048 * 512)) --sizelimit $(((4096 * 2048 - 2048) * 512)) "$raw")
  mkdir -p "$mnt"
  trap cleanup_disk EXIT
  mkfs.ext4 -q -L root "$loop"
  mount "$loop" "$mnt"
  tar -C "$mnt" -xpf "$work/rootfs.tar"
  for m in dev dev/pts proc sys run; do mount --bind "/$m" "$mnt/$m"; done
  # containerd of the image itself, in a chroot, imports every archive into its store.
  mkdir -p "$mnt$sock" "$mnt/tmp/archives"
  cp "$work"/archives/*.tar "$mnt/tmp/archives/"
  chroot "$mnt" sh -c "containerd --address $sock/sock --state $sock >/var/log/image-build-containerd.log 2>&1 & echo \$! >/run/build-containerd.pid"
  for _ in $(seq 50); do [ -S "$mnt$sock/sock" ] && break; sleep 0.2; done
  for a in "$mnt"/tmp/archives/*.tar; do
    chroot "$mnt" ctr --address "$sock/sock" -n k8s.io images import "/tmp/archives/${a##*/}" >/dev/null
  done
  chroot "$mnt" ctr --address "$sock/sock" -n k8s.io images ls -q | grep -v '^sha256:' >"$work/images.txt"
  kill "$(cat "$mnt/run/build-containerd.pid")" && sleep 1
  rm -rf "$mnt/tmp/archives" "$mnt$sock" "$mnt/var/log/image-build-containerd.log" "$mnt/run/build-containerd.pid"
  for m in dev/pts dev proc sys run; do umount "$mnt/$m"; done
  # Boot: extlinux on the root file system, syslinux's MBR in front of the partition.
  # No tsc=reliable: it spares the emulated HPET's costly reads, but it also turns off the
  # watchdog that catches a TSC calibrated wrong. A guest booted beside three others on a loaded
  # host took the PIT's 849 MHz over the HPET's 2596 (the host's), and its clock ran 3x fast:
  # kubeadm's 20 min wait ran out in 7 (HA run 7). The watchdog moves such a kernel to the HPET.
  mkdir -p "$mnt/boot/extlinux"
  cat >"$mnt/boot/extlinux/extlinux.conf" <<EOF
DEFAULT debian
TIMEOUT 1
LABEL debian
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND root=LABEL=root ro console=ttyS0 net.ifnames=0
EOF
  extlinux --install "$mnt/boot/extlinux" >/dev/null
  # The kernel, also beside the image: `libvirt.domain_type: auto` boots it under KVM to probe.
  cp "$(ls "$mnt"/boot/vmlinuz-* | head -n1)" "$out/vmlinuz"
  echo "LABEL=root / ext4 defaults 0 1" >"$mnt/etc/fstab"
  umount "$mnt"
  losetup -d "$loop" && loop=
  dd if=/usr/lib/syslinux/mbr/mbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none
  qemu-img convert -c -O qcow2 "$raw" "$image.tmp" && mv "$image.tmp" "$image"
  rm -f "$raw"
  write_manifest
}

write_manifest() {
  python3 - "$out/manifest.json" "$image" "$work/archives" "$work/images.txt" <<'EOF'
import hashlib, json, pathlib, sys
out, image, archives, imported = map(pathlib.Path, sys.argv[1:])
def digest(p): return "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
json.dump({
    "image": image.name,
    "digest": digest(image),
    "archives": {a.name: digest(a) for a in sorted(archives.glob("*.tar"))},
    "containerd_images": imported.read_text().split(),
}, out.open("w"), indent=2)
EOF
}

stage binaries build_binaries "$src/go"
stage archives build_archives "$src/archive.py" "$work/stamps/binaries"
stage rootfs build_rootfs "$src/rootfs" "$src/build.sh" "$work/stamps/binaries"
[ -f "$image" ] || rm -f "$work/stamps/disk"
stage disk build_disk "$work/stamps/rootfs" "$work/stamps/archives"
say "$image ($(du -h "$image" | cut -f1))"
