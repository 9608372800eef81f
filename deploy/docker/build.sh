#!/usr/bin/env bash
# Builds the Quorumkey image FROM scratch from this clone:
#   deploy/docker/build.sh [TAG]        (default tag: quorumkey:dev)
# It builds the release binaries, copies them and the shared libraries ldd
# names (with the dynamic loader) into a fresh context, adds a passwd entry
# for the unprivileged user 10001 and the directories it owns, and runs
# `docker build`. Needs cargo and a Docker engine; pulls nothing.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tag=${1:-quorumkey:dev}
cd "$root"

# QK_BIN_DIR: use the qk and qk-node binaries there instead of building
# release ones (the container tests use the binaries cargo test built).
bin=${QK_BIN_DIR:-}
if [ -z "$bin" ]; then
  cargo build --release --locked -p qk -p qk-node
  bin=target/release
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
rootfs=$ctx/rootfs
owned=$ctx/owned
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/quorumkey" "$rootfs/tmp" \
  "$owned/var/lib/quorumkey" "$owned/pki"
cp "$bin/qk-node" "$bin/qk" "$rootfs/usr/local/bin/"

# The shared libraries and the loader the binaries name, at the same paths.
libs=$(ldd "$bin/qk-node" "$bin/qk" \
  | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
for lib in $libs; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done

# Name resolution (compose service names): glibc reads these; Docker mounts
# /etc/hosts and /etc/resolv.conf at run time.
printf 'root:x:0:0:root:/root:/sbin/nologin\nqk:x:10001:10001:quorumkey:/var/lib/quorumkey:/sbin/nologin\n' \
  > "$rootfs/etc/passwd"
printf 'root:x:0:\nqk:x:10001:\n' > "$rootfs/etc/group"
printf 'hosts: files dns\n' > "$rootfs/etc/nsswitch.conf"

# Directories the node writes are the user's (the Dockerfile copies owned/
# with --chown); volumes mounted there inherit it.
chmod 0700 "$owned/var/lib/quorumkey" "$owned/pki"
chmod 1777 "$rootfs/tmp"
cp deploy/docker/Dockerfile "$ctx/Dockerfile"
docker build --quiet -t "$tag" "$ctx"
echo "built $tag ($(docker image inspect -f '{{.Size}}' "$tag") bytes)"
