#!/usr/bin/env bash
# Builds etcd at the pinned release from its Go module (through the Go module proxy) and caches it by
# version; prints the binary's path. Used by the `diff-large` benchmark (README, Benchmarks): the
# distribution's etcd 3.4.23 predates the progress notifications the API server needs to answer a
# consistent list from its watch cache, so every list is read from etcd there, unlike in current
# clusters.
#
# etcd's own `main` lives in its repository's root module, whose go.mod replaces its sibling modules
# by relative paths and so cannot be built from the proxy; its entry point, etcdmain.Main, is in the
# published server module, which a throwaway module calls the way the root module's main does.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
version="${ETCD_VERSION:?}"
cache_root="${SPIDERPOOL_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spiderpool-rs}"
out="$cache_root/etcd/v$version"
if [ -x "$out/etcd" ]; then
  echo "$out/etcd"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "build-etcd.sh: 'go' is not on PATH; install Go >= 1.24 (https://go.dev/dl or 'apt-get install golang-1.24')" >&2
  exit 1
fi
mkdir -p "$cache_root/etcd"
exec 9>"$cache_root/etcd/.build.lock"
flock 9
if [ -x "$out/etcd" ]; then
  echo "$out/etcd"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# shellcheck source=go-scratch.sh
source "$here/go-scratch.sh"
scratch_go_caches "$work"
# The throwaway module has a directory of its own: Go takes every directory under a module's root
# for one of its packages, the scratch module cache too.
mkdir "$work/module"
cd "$work/module"
echo "build-etcd.sh: building etcd v$version into $out (first run only; a few minutes on 2 cores)" >&2
go mod init spiderpool-rs.test/etcd-build >/dev/null 2>&1
cat > main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
go get "go.etcd.io/etcd/server/v3@v$version"
go mod tidy
mkdir -p "$out"
go build -trimpath -ldflags "-s -w" -o "$out/etcd.partial.$$" .
mv "$out/etcd.partial.$$" "$out/etcd"
"$out/etcd" --version >&2
echo "$out/etcd"
