#!/usr/bin/env bash
# Installs what the cluster and netns test tiers need, idempotently, and builds (first run) or
# restores (cached) the pinned Kubernetes binaries. Meant for .ci/run and fresh machines; needs root
# (or sudo) for apt. Prints the directory holding the Kubernetes binaries on its last line.
#
#   etcd-server                  etcd for the loopback control plane (/usr/bin/etcd)
#   containernetworking-plugins  the reference CNI plugins the node simulator runs (/usr/lib/cni)
#   iproute2                     `ip netns` / `ip link`, used by the node simulator
#   iputils-ping                 connectivity checks between simulated pods
#   lua5.1                       runs the chart's Argo CD health check (Argo CD's gopher-lua is a Lua 5.1)
#   Go >= 1.24 on PATH           only when the Kubernetes binaries or helm are not cached yet
#   gcc-aarch64-linux-gnu, musl-tools, rustup targets x86_64/aarch64-unknown-linux-musl
#                                the container images' static binaries (tests/tools/build-images.sh)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
packages=(etcd-server containernetworking-plugins iproute2 iputils-ping ca-certificates lua5.1)
# The kernel tier (tests/src/vm.rs): QEMU boots Debian's kernel, which has the bonding, 802.1q, dummy
# and ipvlan the host kernel lacks.
#   qemu-system-x86  QEMU with software emulation, installed without recommends (on an image with
#                    backports' qemu-utils this removes it: the two versions conflict; nothing here uses it)
#   busybox-static   the guest's shell and tools
#   kmod             depmod, for the downloaded kernel's modules.dep
#   binutils         objcopy, to strip debug info from binaries copied into the guest
packages+=(qemu-system-x86 busybox-static kmod binutils)
# The real-node tier (tests/src/realnode): real kubelets need a container runtime and netfilter tools,
# and its sandbox and workload images are built locally.
#   containerd, runc             every real node's container runtime (Debian's 1.6 and 1.1)
#   iptables, conntrack          kube-proxy (iptables mode) and kubelet's own rules, per node
#   busybox-static               the workload image
#   gcc, libc6-dev               the static pause program of the sandbox image
packages+=(containerd runc iptables conntrack busybox-static gcc libc6-dev)
# The container images (issue 16): a C cross compiler for ring's arm64 objects, musl-gcc for amd64.
packages+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross musl-tools)

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo=(sudo); else
      echo "install-test-deps.sh: need root (or sudo) to apt-get install: ${missing[*]}" >&2
      exit 1
    fi
  fi
  echo "install-test-deps.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
    "${sudo[@]}" apt-get update >&2
    "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >&2
  fi
fi

for bin in /usr/bin/etcd /usr/lib/cni/macvlan /usr/lib/cni/host-local /usr/lib/cni/loopback \
  /usr/bin/containerd /usr/sbin/runc /bin/busybox; do
  if [ ! -x "$bin" ]; then
    echo "install-test-deps.sh: $bin is missing after installing ${packages[*]}" >&2
    exit 1
  fi
done
command -v lua5.1 >/dev/null 2>&1 || { echo "install-test-deps.sh: 'lua5.1' is not on PATH" >&2; exit 1; }
command -v ip >/dev/null 2>&1 || { echo "install-test-deps.sh: 'ip' (iproute2) is not on PATH" >&2; exit 1; }
for bin in /usr/bin/qemu-system-x86_64 /bin/busybox; do
  [ -x "$bin" ] || { echo "install-test-deps.sh: $bin is missing after installing ${packages[*]}" >&2; exit 1; }
done

# The kernel tier's Debian kernel: downloaded on the first run (about 70 MB), cached by version.
bash "$here/vm-kernel.sh" >/dev/null

# The container images' Rust targets (rustup fetches them once; a no-op when installed).
if command -v rustup >/dev/null 2>&1; then
  installed=$(rustup target list --installed)
  for target in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
    grep -qx "$target" <<<"$installed" || rustup target add "$target" >&2
  done
fi
# helm at the pinned version (first run: about two minutes with Go; cached afterwards).
bash "$here/build-helm.sh" >/dev/null

# Builds kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kube-proxy on the first run (minutes; needs
# Go and the Go module proxy), a no-op afterwards. Prints the directory of the binaries.
bash "$here/build-kubernetes.sh"
