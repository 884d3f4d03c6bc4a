#!/usr/bin/env bash
# Build the lab's node image of one Kubernetes release offline, from Debian's packages and Go
# modules only (image/README.md):
#   1. rootfs     Debian 13 (mmdebstrap): containerd, runc, CNI plugins, cloud-init, sshd, the
#                 kubelet unit, modules and sysctls kubeadm's preflight wants (one for every release)
#   2. binaries   kubeadm, kubelet, kubectl, the control-plane servers, kube-proxy, etcd, CoreDNS,
#                 pause, flanneld and flannel's CNI plugin, from image/go (a pinned modfile per
#                 version, go/pin.sh), at the versions image/versions.tsv gives the release
#   3. archives   a docker archive per container image, tagged as the lab tells kubeadm
#   4. disk       the rootfs + this release's binaries, the archives imported into containerd's
#                 store (a node pulls nothing), as a bootable qcow2
# Output, in the cache (LAB_IMAGE_CACHE, default ~/.cache/k8s-libvirt-lab/images), then linked
# into this clone's .lab/images/:
#   k8s-node-v<K>.qcow2   the image
#   k8s-node-v<K>.json    its manifest: digests, versions, the images in containerd's store
#   k8s-node-v<K>/        what an in-place upgrade to <K> copies to a node: bin/ and archives/
#   vmlinuz               the kernel (every release's is the same Debian one)
# Each stage has a stamp (the hash of its inputs) in the cache: a second run, from this clone or
# another on the same host, skips every stage whose inputs are unchanged.
#
# Usage: image/build.sh [KUBERNETES_VERSION]   (root: mmdebstrap, loop devices, chroot)
#        default: the newest release of image/versions.tsv
set -euo pipefail

# In a mount namespace of its own: the image's file system is mounted only there. A namespace that
# another process unshared while it was mounted in the host's (the integration tier's nodes do)
# kept it mounted after the build's umount, so the image was written unflushed, its journal
# needing recovery and its /etc/fstab lost: guests booted with / read-only (session 19).
if [ -z "${LAB_IMAGE_BUILD_NS:-}" ]; then
  exec env LAB_IMAGE_BUILD_NS=1 unshare --mount --propagation private "$0" "$@"
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src=$root/image
cache=${LAB_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-libvirt-lab/images}
out=$root/.lab/images
say() { echo "image: $*"; }

releases=$(grep -v '^#' "$src/versions.tsv" | cut -f1 | sort -V)
version=${1:-$(tail -n1 <<<"$releases")}
row=$(awk -F'\t' -v v="$version" '$1 == v' "$src/versions.tsv")
if [ -z "$row" ]; then
  echo "image: Kubernetes $version is not a release the image builds; these are:" \
    $releases "(image/versions.tsv)" >&2
  exit 2
fi
IFS=$'\t' read -r _ etcd coredns pause_tag _ <<<"$row"
kubernetes=v$version
etcd_tag=$etcd-0
coredns_tag=$coredns
flannel=$(awk -v m=github.com/flannel-io/flannel '($1 == "require" && $2 == m) {print $3} $1 == m {print $2}' \
  "$src/go/flannel/go.mod")
[ -n "$flannel" ] || { echo "image: no flannel version in image/go/flannel/go.mod" >&2; exit 1; }
suite=trixie
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
common=$cache/build/common
work=$cache/build/$kubernetes
bin=$work/bin
name=k8s-node-$kubernetes
image=$cache/$name.qcow2

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  PATH=$PATH:/usr/local/go/bin
fi
# GOTOOLCHAIN=auto: a release whose modules need a newer Go than this machine's has Go fetch that
# toolchain through the module proxy, as Go documents (e.g. go1.27.3); others build with the local.
export GOFLAGS="-mod=readonly -trimpath" GOTOOLCHAIN=auto CGO_ENABLED=0
mkdir -p "$common/stamps" "$work/stamps" "$bin" "$work/archives" "$out"
# One build at a time in this cache (two clones may share it).
exec 9>"$cache/.lock"
flock 9

# No documentation, manual pages or translations in the image.
slim=(--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/locale/*')

# inputs_hash WORDS -- PATH...: what decides a stage: the words (versions) and the files under the paths.
inputs_hash() {
  local words=()
  while [ "$1" != -- ]; do words+=("$1"); shift; done
  shift
  { echo "${words[*]}"; find "$@" -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | cut -d' ' -f1; } |
    sha256sum | cut -d' ' -f1
}

# stage DIR NAME FUNCTION WORDS -- INPUT...: run FUNCTION unless DIR's stamp matches the inputs' hash.
stage() {
  local dir=$1 stamp=$2 fn=$3 hash start
  shift 3
  hash=$(inputs_hash "$@")
  if [ "$(cat "$dir/stamps/$stamp" 2>/dev/null)" = "$hash" ]; then
    say "$kubernetes $stamp up to date"
    return
  fi
  say "$kubernetes $stamp ..."
  start=$SECONDS
  rm -f "$dir/stamps/$stamp"
  "$fn"
  echo "$hash" >"$dir/stamps/$stamp"
  say "$kubernetes $stamp done in $((SECONDS - start))s"
}

packages=(
  linux-image-cloud-amd64 systemd-sysv systemd-resolved netplan.io cloud-init openssh-server
  qemu-guest-agent sudo ca-certificates extlinux containerd runc containernetworking-plugins
  conntrack socat iptables ebtables ethtool ipset kmod keepalived haproxy
  cloud-guest-utils
)

# Every release's root: nothing in it depends on the Kubernetes version (the disk stage adds it).
build_rootfs() {
  local packed
  packed=$(IFS=,; echo "${packages[*]}")
  mmdebstrap --variant=important --include="$packed" "${slim[@]}" \
    --customize-hook="tar -C '$src/rootfs' -c . | tar -C \"\$1\" -x --no-same-owner" \
    --customize-hook='chroot "$1" systemctl enable kubelet.service containerd.service' \
    --customize-hook='mkdir -p "$1/etc/containerd" && chroot "$1" containerd config default >"$1/etc/containerd/config.toml"' \
    --customize-hook="sed -i 's/SystemdCgroup = false/SystemdCgroup = true/' \"\$1/etc/containerd/config.toml\"" \
    "$suite" "$common/rootfs.tar" "$mirror"
  # kube-proxy's and flanneld's images: a small Debian root under the binary (iptables, nft,
  # conntrack, ipset), the same for every release.
  mmdebstrap --variant=essential --include=iptables,nftables,conntrack,ipset,kmod \
    "${slim[@]}" "$suite" "$common/proxy-root.tar" "$mirror"
}

# go_build DIR MODFILE OUT PACKAGE...: build in image/go/DIR against its pinned MODFILE.
go_build() {
  local dir=$1 modfile=$2 target=$3
  shift 3
  (cd "$src/go/$dir" && go build ${modfile:+-modfile="$modfile"} -ldflags "-s -w${ldflags:-}" -o "$target" "$@")
}

build_binaries() {
  local v=${kubernetes#v} ldflags=
  local major=${v%%.*} minor=${v#*.}
  minor=${minor%%.*}
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$kubernetes -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean"
  done
  ldflags=$ldflags go_build kubernetes "$kubernetes.mod" "$bin/" \
    k8s.io/kubernetes/cmd/kubeadm k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubectl \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy
  go_build etcd "v$etcd.mod" "$bin/etcd" .
  go_build coredns "$coredns.mod" "$bin/coredns" github.com/coredns/coredns
  go_build pause "" "$bin/pause" .
  go_build flannel "" "$bin/flanneld" .
  go_build cni "" "$bin/cni-flannel" github.com/containernetworking/plugins/plugins/meta/flannel
}

# One docker archive per image, tagged as the lab's kubeadm configuration names them. flanneld's
# image is ours (localhost/...): pods run it with pullPolicy Never.
build_archives() {
  local a=$work/archives r=registry.k8s.io server
  rm -f "$a"/*.tar
  for server in kube-apiserver kube-controller-manager kube-scheduler; do
    python3 "$src/archive.py" "$a/$server.tar" "$r/$server:$kubernetes" \
      --file "/usr/local/bin/$server=$bin/$server"
  done
  python3 "$src/archive.py" "$a/kube-proxy.tar" "$r/kube-proxy:$kubernetes" \
    --base "$common/proxy-root.tar" --file "/usr/local/bin/kube-proxy=$bin/kube-proxy"
  python3 "$src/archive.py" "$a/flanneld.tar" "localhost/k8s-libvirt-lab/flanneld:$flannel" \
    --base "$common/proxy-root.tar" --file "/usr/local/bin/flanneld=$bin/flanneld"
  python3 "$src/archive.py" "$a/etcd.tar" "$r/etcd:$etcd_tag" --file "/usr/local/bin/etcd=$bin/etcd"
  python3 "$src/archive.py" "$a/coredns.tar" "$r/coredns/coredns:$coredns_tag" \
    --entrypoint /coredns --file "/coredns=$bin/coredns"
  python3 "$src/archive.py" "$a/pause.tar" "$r/pause:$pause_tag" \
    --entrypoint /pause --file "/pause=$bin/pause"
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
  tar -C "$mnt" -xpf "$common/rootfs.tar"
  # This release: its kubeadm, kubelet and kubectl, flannel's CNI plugin, the pause image
  # containerd's sandboxes use.
  install -m 0755 "$bin/kubeadm" "$bin/kubelet" "$bin/kubectl" "$mnt/usr/bin/"
  install -m 0755 "$bin/cni-flannel" "$mnt/usr/lib/cni/flannel"
  sed -i "s#sandbox_image = .*#sandbox_image = \"registry.k8s.io/pause:$pause_tag\"#" \
    "$mnt/etc/containerd/config.toml"
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
  cp "$(ls "$mnt"/boot/vmlinuz-* | head -n1)" "$cache/vmlinuz"
  echo "LABEL=root / ext4 defaults 0 1" >"$mnt/etc/fstab"
  umount "$mnt"
  if dumpe2fs -h "$loop" 2>/dev/null | grep -q needs_recovery; then
    echo "image: the image's file system is still mounted elsewhere after its umount" >&2
    exit 1
  fi
  losetup -d "$loop" && loop=
  dd if=/usr/lib/syslinux/mbr/mbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none
  qemu-img convert -c -O qcow2 "$raw" "$image.tmp" && mv "$image.tmp" "$image"
  rm -f "$raw"
  write_manifest
  # What an in-place upgrade to this release copies to a node (lab/ops/upgrade.py).
  rm -rf "$cache/$name" && mkdir -p "$cache/$name/bin"
  cp "$bin/kubeadm" "$bin/kubelet" "$bin/kubectl" "$cache/$name/bin/"
  cp -r "$work/archives" "$cache/$name/archives"
}

write_manifest() {
  python3 - "$cache/$name.json" "$image" "$work/archives" "$work/images.txt" "$version" \
    "$etcd_tag" "$coredns_tag" "$pause_tag" <<'EOF'
import hashlib, json, pathlib, sys
out, image, archives, imported = map(pathlib.Path, sys.argv[1:5])
kubernetes, etcd, coredns, pause = sys.argv[5:]
def digest(p): return "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
json.dump({
    "image": image.name,
    "digest": digest(image),
    "versions": {"kubernetes": kubernetes, "etcd": etcd, "coredns": coredns, "pause": pause},
    "archives": {a.name: digest(a) for a in sorted(archives.glob("*.tar"))},
    "containerd_images": imported.read_text().split(),
}, out.open("w"), indent=2)
EOF
}

go_inputs=("$src/go/kubernetes/$kubernetes".* "$src/go/kubernetes/tools.go" "$src/go/etcd/v$etcd".*
  "$src/go/etcd/main.go" "$src/go/coredns/$coredns".* "$src/go/coredns/tools.go" "$src/go/pause"
  "$src/go/flannel" "$src/go/cni")
stage "$common" rootfs build_rootfs "$suite" "${packages[@]}" -- "$src/rootfs" "$src/build.sh"
stage "$work" binaries build_binaries "$kubernetes $etcd $coredns" -- "${go_inputs[@]}"
stage "$work" archives build_archives "$etcd_tag $coredns_tag $pause_tag $flannel" -- \
  "$src/archive.py" "$work/stamps/binaries" "$common/stamps/rootfs"
[ -f "$image" ] && [ -d "$cache/$name" ] || rm -f "$work/stamps/disk"
stage "$work" disk build_disk "$pause_tag" -- "$common/stamps/rootfs" "$work/stamps/archives"

# This clone's .lab/images: hard links into the cache where they share a file system, else copies.
for f in "$name.qcow2" "$name.json" "$name" vmlinuz; do
  rm -rf "${out:?}/$f"
  cp -al "$cache/$f" "$out/$f" 2>/dev/null || cp -a "$cache/$f" "$out/$f"
done
say "$out/$name.qcow2 ($(du -h "$image" | cut -f1)); releases built: $(ls "$cache" | sed -n 's/^k8s-node-v\(.*\)\.qcow2$/\1/p' | tr '\n' ' ')"
