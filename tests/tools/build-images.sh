#!/usr/bin/env bash
# Builds the project's container images (operator and agent, linux/amd64 and linux/arm64) as OCI
# archives in target/images/ (or the directory given as $1), reproducibly and without a container
# engine, then lints and packages the Helm chart next to them. Cached by a hash of the inputs (see
# tests/src/images.rs): a second run with unchanged sources takes seconds. Prints the output directory.
#
# Import into a node's containerd:  ctr -n k8s.io images import target/images/spiderpool-agent.oci.tar
# Needs: rustup targets x86_64/aarch64-unknown-linux-musl, musl-tools, gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, Go (for
# helm, built once by build-helm.sh); tests/tools/install-test-deps.sh installs all of them.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out="${1:-${CARGO_TARGET_DIR:-$repo/target}/images}"
mkdir -p "$out"
out=$(cd "$out" && pwd)

cd "$repo"
cargo run -q --locked -p spiderpool-tests --bin build-images -- "$out" >/dev/null
# The images are cached by their inputs; the cargo build they came from (target/image-build, about
# 1.5 GB) only makes the next rebuild faster. On a machine short of disk (a CI machine once ran out)
# it goes: below 20 GiB free, it is deleted and a changed source rebuilds the images from scratch.
free_kib=$(df -k --output=avail "$repo" | tail -1 | tr -d ' ')
if [ "$free_kib" -lt $((20 * 1024 * 1024)) ] && [ -d "$repo/target/image-build" ]; then
  echo "build-images.sh: $((free_kib / 1024)) MiB free; deleting target/image-build (the images are kept)" >&2
  rm -rf "$repo/target/image-build"
fi

helm_dir=$(bash "$here/build-helm.sh")
"$helm_dir/helm" lint --strict charts/spiderpool >&2
"$helm_dir/helm" package charts/spiderpool --destination "$out" >&2
echo "$out"
