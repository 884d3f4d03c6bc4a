#!/usr/bin/env bash
# Pin one Kubernetes release's Go modules for the image build, from its row of image/versions.tsv:
#   go/kubernetes/v<K>.mod + .sum   k8s.io/kubernetes and its staging modules at the release
#   go/etcd/v<E>.mod + .sum         the etcd server kubeadm of that release runs
#   go/coredns/<C>.mod + .sum       CoreDNS
# build.sh builds each with `go build -modfile=...` (one main per component, a modfile per
# version). Run once when a row is added; the files are committed (a reproducible build).
#
# Usage: image/go/pin.sh KUBERNETES_VERSION     e.g. image/go/pin.sh 1.37.2
set -euo pipefail
go=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
row=$(awk -v v="$1" '$1 == v' "$go/../versions.tsv")
[ -n "$row" ] || { echo "pin.sh: $1 is not a row of image/versions.tsv" >&2; exit 2; }
read -r kubernetes etcd coredns _ <<<"$row"
export GOFLAGS=-mod=mod GOTOOLCHAIN=auto

# modfile DIR NAME MODULE VERSION [REPLACES]: write DIR/NAME.mod requiring MODULE@VERSION, tidy it.
modfile() {
  local dir=$go/$1 file=$go/$1/$2.mod
  { echo "module k8s-libvirt-lab/image/go/$1"; echo; echo "go $5"; echo
    echo "require $3 $4"; [ -z "${6:-}" ] || printf '\nreplace (\n%s\n)\n' "$6"; } >"$file"
  rm -f "${file%.mod}.sum"
  (cd "$dir" && go mod tidy -modfile="$file")
  echo "pin.sh: $file"
}

# k8s.io/kubernetes points its staging modules at ./staging; outside its tree they are the
# published k8s.io/* modules of the same release (v0.<minor>.<patch>).
src=$(go mod download -json "k8s.io/kubernetes@v$kubernetes" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
gover=$(awk '$1 == "go" {print $2; exit}' "$src/go.mod")
replaces=$(awk -v v="v0.${kubernetes#1.}" '$2 == "=>" && $3 ~ /^\.\/staging/ {printf "\t%s => %s %s\n", $1, $1, v}' "$src/go.mod")
modfile kubernetes "v$kubernetes" k8s.io/kubernetes "v$kubernetes" "$gover" "$replaces"
modfile etcd "v$etcd" go.etcd.io/etcd/server/v3 "v$etcd" "$gover"
modfile coredns "$coredns" github.com/coredns/coredns "$coredns" "$gover"
