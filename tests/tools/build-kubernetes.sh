#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and kube-scheduler (the loopback control plane) and
# kubelet and kube-proxy (the real-node tier) at the pinned release from the Kubernetes Go module
# (through the Go module proxy) and caches them by version, so only the first run on a machine pays
# for the build; a cache that lacks some of them (an older cache) gets only those built. Prints the
# directory that holds the binaries.
#
# Why a throwaway Go module: k8s.io/kubernetes refers to its staging repos (k8s.io/api, k8s.io/apiserver, ...)
# as `v0.0.0 => ./staging/...`, which only works inside its own repository. A consumer module has to
# replace each staging repo with its published `v0.<minor>.<patch>` module instead.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
version="${KUBERNETES_VERSION:?}"
staging_version="v0.${version#1.}"
cache_root="${SPIDERPOOL_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spiderpool-rs}"
out="$cache_root/kubernetes/v$version"
binaries=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

missing() {
  for b in "${binaries[@]}"; do [ -x "$out/$b" ] || echo "$b"; done
}
if [ -z "$(missing)" ]; then
  echo "$out"
  exit 0
fi
# Test binaries of several crates may call this at once: one builds, the others wait and find the cache.
mkdir -p "$cache_root/kubernetes"
exec 9>"$cache_root/kubernetes/.build.lock"
flock 9
mapfile -t todo < <(missing)
if [ ${#todo[@]} -eq 0 ]; then
  echo "$out"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "build-kubernetes.sh: 'go' is not on PATH; install Go >= 1.24 (https://go.dev/dl or 'apt-get install golang-1.24')" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
# shellcheck source=go-scratch.sh
source "$here/go-scratch.sh"
scratch_go_caches "$work"

echo "build-kubernetes.sh: building Kubernetes v$version (${todo[*]}) into $out (first run only; several minutes on 2 cores)" >&2
go mod init spiderpool-rs.test/kubernetes-build >/dev/null 2>&1
gomod=$(go mod download -json "k8s.io/kubernetes@v$version" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
if [ ! -f "$gomod" ]; then
  echo "build-kubernetes.sh: could not download k8s.io/kubernetes@v$version through the Go module proxy" >&2
  exit 1
fi
go mod edit -require="k8s.io/kubernetes@v$version"
# Every `k8s.io/x => ./staging/src/k8s.io/x` in the upstream go.mod becomes `k8s.io/x => k8s.io/x@v0.<minor>.<patch>`.
while read -r module; do
  go mod edit -replace="$module=$module@$staging_version"
done < <(sed -n 's#^\s*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/.*#\1#p' "$gomod")
pkgs=()
for b in "${todo[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
go get "${pkgs[@]/%/@v$version}"

minor=${version#1.}; minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=v$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
partial="$out.partial.$$"
mkdir -p "$partial" "$out"
go build -trimpath -ldflags "$ldflags" -o "$partial/" "${pkgs[@]}"
# One rename per binary: tests of other crates may be running the cached ones meanwhile.
for b in "${todo[@]}"; do mv "$partial/$b" "$out/$b"; done
rm -rf "$partial"
[ -z "$(missing)" ] || { echo "build-kubernetes.sh: missing after the build: $(missing | tr '\n' ' ')" >&2; exit 1; }
echo "$out"
