#!/usr/bin/env bash
# Build the Pulumi engine into .tools/bin:
#   pulumi and pulumi-resource-libvirt, from wrapper modules on Go modules;
#   pulumi-language-python (+ its exec script) and pulumi-resource-command, from the upstream
#   sources copied into engine/third_party (the module proxy does not serve them).
#
# Cached: each binary has a stamp (.tools/stamps/NAME) holding its version and
# a hash of its source folder (every file in it but the generated schema.json). A
# binary whose stamp matches is not rebuilt, so a second run does nothing.
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
# A newer CLI runs programs of an older SDK, and so does the language host.
pulumi_version=v3.274.1
python_host_version=3.259.0
libvirt_version=0.5.4
command_version=1.2.1

# Go: from PATH, else the official tarball's install place.
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  PATH=$PATH:/usr/local/go/bin
fi
command -v go >/dev/null 2>&1 || { echo "engine/build.sh: go not found (Go >= 1.26.6 needed)" >&2; exit 1; }

# readonly: the committed go.sum files must be complete (reproducible builds);
# local toolchain: never download another Go.
export GOFLAGS="-mod=readonly -trimpath" GOTOOLCHAIN=local CGO_ENABLED=0

mkdir -p "$bin" "$stamps" "$work"

# wrapper_hash DIR: hash of what decides the build: every file, embedded ones (go:embed
# of *.md) and the exec script included; the libvirt schema.json is generated, so left out.
wrapper_hash() {
  (cd "$1" && find . -type f ! -path ./cmd/pulumi-resource-libvirt/schema.json -print0 \
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
  local dir=$engine/third_party/pulumi-language-python
  (cd "$dir" && go build \
    -ldflags "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$python_host_version" \
    -o "$bin/pulumi-language-python" .)
  install -m 0755 "$dir/pulumi-language-python-exec" "$bin/pulumi-language-python-exec"
}

build_command() {
  (cd "$engine/third_party/pulumi-command/provider" && go build \
    -ldflags "-X github.com/pulumi/pulumi-command/provider/pkg/version.Version=$command_version" \
    -o "$bin/pulumi-resource-command" ./cmd/pulumi-resource-command)
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
[ ${#want[@]} -gt 0 ] || want=(pulumi pulumi-language-python pulumi-resource-libvirt pulumi-resource-command)
for name in "${want[@]}"; do
  case $name in
    pulumi) build pulumi "$pulumi_version" "$engine/pulumi" build_pulumi ;;
    pulumi-language-python) build pulumi-language-python "$python_host_version" "$engine/third_party/pulumi-language-python" build_python_host ;;
    pulumi-resource-libvirt) build pulumi-resource-libvirt "$libvirt_version" "$engine/pulumi-resource-libvirt" build_libvirt ;;
    pulumi-resource-command) build pulumi-resource-command "$command_version" "$engine/third_party/pulumi-command/provider" build_command ;;
    *) echo "engine/build.sh: unknown binary $name" >&2; exit 2 ;;
  esac
done
