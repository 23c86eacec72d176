#!/usr/bin/env bash
# Fetches Debian's real kernel (the package linux-image-amd64 depends on) for the VM test tier and
# caches it unpacked by package version, so only the first run on a machine downloads it (about 70 MB).
# Prints the directory that holds `vmlinuz` and `lib/modules/<kernel release>/` (with modules.dep).
#
# The host kernel has no bonding, 802.1q or ipvlan; Debian's kernel has them as modules, and the
# harness in tests/src/vm.rs boots it in QEMU with those modules in an initramfs.
#
# Needs apt (root) and dpkg-deb + depmod (packages dpkg and kmod). With no apt lists yet (a fresh
# machine) it runs `apt-get update` once. If apt cannot resolve the package at all, the newest kernel
# already cached is used.
set -euo pipefail

cache_root="${SPIDERPOOL_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spiderpool-rs}"
cache="$cache_root/vm-kernel"
mkdir -p "$cache"

say() { echo "vm-kernel.sh: $*" >&2; }

resolve() {
  local pkg version
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  [ -n "$pkg" ] || return 1
  version=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/{print $2; exit}')
  [ -n "$version" ] && [ "$version" != "(none)" ] || return 1
  echo "$pkg $version"
}

if ! resolved=$(resolve); then
  if [ "$(id -u)" -eq 0 ]; then
    say "apt cannot resolve linux-image-amd64 yet; running apt-get update"
    apt-get update -qq >&2 || true
  fi
  if ! resolved=$(resolve); then
    newest=$(ls -1d "$cache"/*/ 2>/dev/null | sort -V | tail -1)
    if [ -n "$newest" ] && [ -f "$newest/vmlinuz" ]; then
      say "apt cannot resolve linux-image-amd64; using the cached ${newest%/}"
      echo "${newest%/}"
      exit 0
    fi
    say "cannot resolve Debian's linux-image-amd64 (run 'apt-get update' as root, or tests/tools/install-test-deps.sh)"
    exit 1
  fi
fi
read -r pkg version <<<"$resolved"
out="$cache/${pkg}_${version}"
if [ -f "$out/vmlinuz" ]; then
  echo "$out"
  exit 0
fi

for tool in dpkg-deb depmod; do
  command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin"
  command -v "$tool" >/dev/null 2>&1 || { say "'$tool' not found: install it with 'apt-get install -y kmod dpkg'"; exit 1; }
done

work=$(mktemp -d "$cache/.partial.XXXXXX")
trap 'rm -rf "$work"' EXIT
say "downloading $pkg $version into $out (first run only)"
(cd "$work" && apt-get download "$pkg=$version" >&2 2>/dev/null) || {
  say "apt-get download $pkg=$version failed (is Debian's archive reachable? run 'apt-get update')"
  exit 1
}
deb=$(ls "$work"/*.deb)
mkdir "$work/unpacked"
dpkg-deb -x "$deb" "$work/unpacked"
release=$(ls "$work/unpacked/lib/modules" | head -1)
[ -n "$release" ] || { say "$deb holds no lib/modules/<release>"; exit 1; }
# The .deb ships no modules.dep; the harness resolves load order with modprobe --show-depends.
depmod -b "$work/unpacked" "$release"
mkdir "$work/out"
mv "$work/unpacked/boot/vmlinuz-$release" "$work/out/vmlinuz"
mkdir -p "$work/out/lib/modules"
mv "$work/unpacked/lib/modules/$release" "$work/out/lib/modules/$release"
echo "$release" > "$work/out/release"
rm -rf "$out"
mv "$work/out" "$out"
echo "$out"
