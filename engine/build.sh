#!/usr/bin/env bash
# Build the Pulumi engine pieces from Go modules into .tools/bin:
#   pulumi, pulumi-language-python (+ its exec script), pulumi-resource-libvirt.
# pulumi-resource-command is not built: see engine/README.md (not on the module proxy).
#
# Cached: each binary has a stamp (.tools/stamps/NAME) holding its version and
# a hash of its wrapper module (go.mod, go.sum, sources). A binary whose stamp
# matches is not rebuilt, so a second run does nothing.
#
# Usage: engine/build.sh [NAME...]   (default: all)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
engine=$root/engine
bin=$root/.tools/bin
stamps=$root/.tools/stamps
work=$root/.tools/build

# Versions. The CLI cannot be v3.272.0 (the Python SDK's pin): the module proxy
# serves pkg/v3 only at some versions, and v3.274.1 is the nearest one after it.
# A newer CLI runs programs of an older SDK; the language host is built on
# sdk/v3 v3.272.0, the SDK's own version.
pulumi_version=v3.274.1
python_host_version=3.272.0
libvirt_version=0.5.4

# Go: from PATH, else the official tarball's install place.
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  PATH=$PATH:/usr/local/go/bin
fi
command -v go >/dev/null 2>&1 || { echo "engine/build.sh: go not found (Go >= 1.26.6 needed)" >&2; exit 1; }

# readonly: the committed go.sum files must be complete (reproducible builds);
# local toolchain: never download another Go.
export GOFLAGS="-mod=readonly -trimpath" GOTOOLCHAIN=local CGO_ENABLED=0

mkdir -p "$bin" "$stamps" "$work"

# wrapper_hash DIR: hash of what decides the build (generated schema.json excluded).
wrapper_hash() {
  (cd "$1" && find . -type f \( -name go.mod -o -name go.sum -o -name '*.go' \) -print0 \
    | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}

# up_to_date NAME VERSION DIR: binary present and stamp matches.
up_to_date() {
  [ -x "$bin/$1" ] && [ -f "$stamps/$1" ] && [ "$(cat "$stamps/$1")" = "$2 $(wrapper_hash "$3")" ]
}

build_pulumi() {
  (cd "$engine/pulumi" && go build \
    -ldflags "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$pulumi_version" \
    -o "$bin/pulumi" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi)
}

build_python_host() {
  local sdk
  (cd "$engine/pulumi-language-python" && go build \
    -ldflags "-X main.version=$python_host_version" -o "$bin/pulumi-language-python" .)
  # The exec script the host runs ships in the same sdk/v3 module.
  sdk=$(cd "$engine/pulumi-language-python" && go list -m -f '{{.Dir}}' github.com/pulumi/pulumi/sdk/v3)
  install -m 0755 "$sdk/python/cmd/pulumi-language-python-exec" "$bin/pulumi-language-python-exec"
}

build_libvirt() {
  local dir=$engine/pulumi-resource-libvirt
  # 1. tfgen writes the Pulumi schema of the bridged provider; 2. the provider embeds it.
  (cd "$dir" && go build -o "$work/pulumi-tfgen-libvirt" ./cmd/pulumi-tfgen-libvirt)
  rm -rf "$work/libvirt-schema"
  (cd "$work" && ./pulumi-tfgen-libvirt schema --out "$work/libvirt-schema" >"$work/tfgen-libvirt.log" 2>&1) \
    || { cat "$work/tfgen-libvirt.log" >&2; return 1; }
  cp "$work/libvirt-schema/schema.json" "$dir/cmd/pulumi-resource-libvirt/schema.json"
  (cd "$dir" && go build \
    -ldflags "-X k8s-libvirt-lab/engine/pulumi-resource-libvirt/provider.Version=$libvirt_version" \
    -o "$bin/pulumi-resource-libvirt" ./cmd/pulumi-resource-libvirt)
}

# build NAME VERSION WRAPPER_DIR FUNCTION
build() {
  local name=$1 version=$2 dir=$3 fn=$4 start
  if up_to_date "$name" "$version" "$dir"; then
    echo "engine: $name $version up to date"
    return
  fi
  echo "engine: building $name $version ..."
  start=$SECONDS
  rm -f "$stamps/$name"
  "$fn"
  echo "$version $(wrapper_hash "$dir")" >"$stamps/$name"
  echo "engine: built $name $version in $((SECONDS - start))s"
}

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(pulumi pulumi-language-python pulumi-resource-libvirt)
for name in "${want[@]}"; do
  case $name in
    pulumi) build pulumi "$pulumi_version" "$engine/pulumi" build_pulumi ;;
    pulumi-language-python) build pulumi-language-python "$python_host_version" "$engine/pulumi-language-python" build_python_host ;;
    pulumi-resource-libvirt) build pulumi-resource-libvirt "$libvirt_version" "$engine/pulumi-resource-libvirt" build_libvirt ;;
    *) echo "engine/build.sh: unknown binary $name" >&2; exit 2 ;;
  esac
done
