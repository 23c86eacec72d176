#!/usr/bin/env bash
# Builds upstream Spiderpool's `coordinator` and `spiderpool` CNI plugins at the release pinned in
# versions.env from their Go module (through the Go module proxy) and caches them by version, so only
# the first run on a machine pays for the build (about 10 minutes on 2 cores with a cold module cache).
# They are test peers only: the differential tests run them next to ours on the same inputs.
# Prints the directory that holds the binaries.
#
# Why build inside a copy of the module: its go.sum pins every dependency, including test-only ones
# that the checksum database no longer serves, so a consumer module could not verify them.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
version="${UPSTREAM_SPIDERPOOL_VERSION:?}"
cache_root="${SPIDERPOOL_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spiderpool-rs}"
out="$cache_root/upstream-spiderpool/v$version"
binaries=(coordinator spiderpool)

have_all() {
  for b in "${binaries[@]}"; do [ -x "$out/$b" ] || return 1; done
}
if have_all; then
  echo "$out"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "build-upstream-spiderpool.sh: 'go' is not on PATH; install Go >= 1.25 (https://go.dev/dl)" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
# shellcheck source=go-scratch.sh
source "$here/go-scratch.sh"
scratch_go_caches "$work"

echo "build-upstream-spiderpool.sh: building Spiderpool v$version's CNI plugins into $out (first run only)" >&2
dir=$(cd "$work" && go mod download -json "github.com/spidernet-io/spiderpool@v$version" | sed -n 's/^\s*"Dir": "\(.*\)",\?$/\1/p')
if [ ! -d "$dir" ]; then
  echo "build-upstream-spiderpool.sh: could not download github.com/spidernet-io/spiderpool@v$version through the Go module proxy" >&2
  exit 1
fi
cp -r "$dir" "$work/src"
chmod -R u+w "$work/src"
mkdir -p "$out.partial"
(cd "$work/src" && for b in "${binaries[@]}"; do go build -trimpath -ldflags "-s -w" -o "$out.partial/$b" "./cmd/$b"; done)
rm -rf "$out"
mv "$out.partial" "$out"
have_all
echo "$out"
