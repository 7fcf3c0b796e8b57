#!/usr/bin/env bash
# Build bench/bin/loadgen offline, in GOPATH mode, against the etcd 3.4
# clientv3 source shipped by Debian's golang-etcd-server-dev package
# (/usr/share/gocode/src/go.etcd.io/etcd/clientv3).
#
#   apt-get install -y golang-go golang-etcd-server-dev   # once, if missing
#   bash bench/build.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
gocode=/usr/share/gocode

if ! command -v go >/dev/null 2>&1; then
    echo "build.sh: 'go' not found (apt-get install golang-go)" >&2
    exit 1
fi
if [ ! -d "$gocode/src/go.etcd.io/etcd/clientv3" ]; then
    echo "build.sh: $gocode/src/go.etcd.io/etcd/clientv3 missing (apt-get install golang-etcd-server-dev)" >&2
    exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

mkdir -p "$here/bin"
export GO111MODULE=off
export GOFLAGS=
export GOPROXY=off
export GOPATH="$gocode:$tmp/gopath"
export GOCACHE="${GOCACHE_DIR:-$tmp/gocache}"
export CGO_ENABLED=0

cd "$here/loadgen"
go build -trimpath -o "$here/bin/loadgen" .
echo "built $here/bin/loadgen"
