#!/usr/bin/env bash
# Builds helm at the version pinned in versions.env from its Go module (helm.sh/helm/v3, through the
# Go module proxy) and caches it by version, so only the first run on a machine pays for the build
# (about two minutes on 2 cores). Prints the directory that holds the `helm` binary.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
version="${HELM_VERSION:?}"
cache_root="${SPIDERPOOL_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spiderpool-rs}"
out="$cache_root/helm/v$version"

if [ -x "$out/helm" ]; then
  echo "$out"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "build-helm.sh: 'go' is not on PATH; install Go >= 1.24 (https://go.dev/dl or 'apt-get install golang-1.24')" >&2
  exit 1
fi

echo "build-helm.sh: building helm v$version into $out (first run only)" >&2
partial="$out.partial.$$"
work=$(mktemp -d)
trap 'rm -rf "$partial" "$work"' EXIT
mkdir -p "$partial"
# shellcheck source=go-scratch.sh
source "$here/go-scratch.sh"
scratch_go_caches "$work"
GOBIN="$partial" go install -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=v$version" \
  "helm.sh/helm/v3/cmd/helm@v$version"
"$partial/helm" version --short >&2
rm -rf "$out"
mv "$partial" "$out"
echo "$out"
