# Sourced by the build-*.sh scripts that build a pinned Go program once and cache the binary by
# version. The Go build and module caches such a build fills (about 4.5 GB for Kubernetes) are of no
# use once the binary is cached, and on a CI machine with little disk they helped fill it: each
# build gets caches of its own under its scratch directory, deleted with it.
#   scratch_go_caches DIR   exports GOCACHE, GOMODCACHE (writable, so `rm -rf` can delete it),
#                           GOFLAGS and GOTOOLCHAIN=local for builds in DIR
scratch_go_caches() {
  export GOCACHE="$1/go-build-cache" GOMODCACHE="$1/go-mod-cache"
  export GOFLAGS="${GOFLAGS:--buildvcs=false} -modcacherw"
  export GOTOOLCHAIN=local
}
