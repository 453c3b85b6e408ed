#!/usr/bin/env sh
# Makes the compose cluster's TLS material and gossip key, once, before `docker compose up`:
#   deploy/compose/secrets.sh [DIR]        (default deploy/compose/secrets, git-ignored)
#
# DIR/ca holds the cluster CA, its key and the gossip key, owned by you (keep them: they issue
# certificates for new nodes; the CA key stays off the nodes); clients trust DIR/ca/ca.pem.
# DIR/central, DIR/edge-1 ... hold each node's bundle (ca.pem, node.pem, node.key,
# gossip.key), owned by the user the image runs as (10001), which docker-compose.yml mounts
# read-only into that node. Keys are 0600, certificates 0644. Everything is made by `driftkv
# certs` inside the driftkv image, so no Rust toolchain is needed here: build the image first
# (deploy/build-image.sh). Existing material is kept: remove DIR to start over.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-"$here/secrets"}
image=${DRIFTKV_IMAGE:-driftkv:latest}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [ -e "$dir/ca/ca.pem" ]; then
  echo "$dir already holds a CA; remove it to make new material" >&2
  exit 1
fi
docker run --rm --user "$(id -u):$(id -g)" -v "$dir:/secrets" "$image" \
  certs init --dir /secrets/ca --name compose
# Root inside the container only to hand each bundle to the nodes' user.
issue() {
  docker run --rm --user 0:0 -v "$dir:/secrets" "$image" certs issue --dir /secrets/ca \
    --node "$1" --role "$2" --out "/secrets/$1" --owner 10001:10001
}
issue central central
for edge in edge-1 edge-2 edge-3; do
  issue "$edge" edge
done
echo "TLS material and gossip key in $dir; clients trust $dir/ca/ca.pem"
