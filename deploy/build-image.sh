#!/usr/bin/env bash
# Builds the container image driftkv:latest (or the tag given as $1) from our own release
# binary, with no base image: the docker engine here reaches no registry, so the image is
# FROM scratch plus the binary, the shared libraries `ldd` says it links (and the dynamic
# loader), and an empty /data owned by the unprivileged user the image runs as.
#
# Usage: deploy/build-image.sh [TAG]
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-driftkv:latest}"
command -v docker >/dev/null || { echo "build-image: docker is not installed" >&2; exit 2; }

cargo build --release --locked -p driftkv
binary=target/release/driftkv

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/rootfs/tmp" "$context/data"
chmod 1777 "$context/rootfs/tmp"
# Debug information stays in target/; the image gets a stripped copy.
objcopy --strip-debug "$binary" "$context/rootfs/driftkv"

# Every absolute path ldd prints is a library to copy, the loader included, at the same path.
libraries=$(ldd "$binary" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | sort -u)
[ -n "$libraries" ] || { echo "build-image: ldd found no libraries in $binary" >&2; exit 1; }
for library in $libraries; do
  mkdir -p "$context/rootfs$(dirname "$library")"
  cp -L "$library" "$context/rootfs$library"
done
# Name lookups (service names in a compose network) go through glibc's NSS: hosts from
# /etc/hosts, then DNS; docker provides both files at run time.
mkdir -p "$context/rootfs/etc"
echo "hosts: files dns" >"$context/rootfs/etc/nsswitch.conf"
echo "driftkv:x:10001:10001:driftkv:/data:/driftkv" >"$context/rootfs/etc/passwd"
echo "driftkv:x:10001:" >"$context/rootfs/etc/group"

cp deploy/image/Dockerfile "$context/Dockerfile"
# The classic builder is what this engine has (no buildx); it needs nothing from a registry.
DOCKER_BUILDKIT=0 docker build --quiet --tag "$tag" "$context" >/dev/null
echo "built $tag ($(docker image inspect --format '{{.Size}}' "$tag" | awk '{ printf "%.1f MB", $1 / 1e6 }'))"
