#!/usr/bin/env sh
# Makes the Kubernetes deployment's secrets, once, before `kubectl apply -k deploy/k8s`:
#   deploy/k8s/secrets.sh            (into deploy/k8s/secrets, git-ignored)
#
# ca/            the cluster CA, its key and the gossip key: keep them to issue certificates
#                for new nodes (the CA key never goes into the cluster); clients trust ca.pem
# central/       central's bundle: ca.pem, node.pem, node.key, gossip.key
# edge/          the edges' bundle (one certificate for every edge pod, named for the
#                driftkv-edge service and the pods' names)
# api-tokens     a random API token (comma-separate more to accept several)
#
# kustomization.yaml turns these files into the Secrets driftkv-tls-central, driftkv-tls-edge
# and driftkv-api-tokens; `kubectl apply -k` fails until they exist. Uses the driftkv binary
# ($DRIFTKV, else `driftkv` on PATH, else this checkout's target/release/driftkv). Existing
# material is kept: remove the directory to start over.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dir="$here/secrets"
if [ -n "${DRIFTKV:-}" ]; then
  driftkv=$DRIFTKV
elif command -v driftkv >/dev/null 2>&1; then
  driftkv=driftkv
elif [ -x "$here/../../target/release/driftkv" ]; then
  driftkv="$here/../../target/release/driftkv"
else
  echo "no driftkv binary: build one (cargo build --release) or set DRIFTKV" >&2
  exit 2
fi
if [ -e "$dir/ca/ca.pem" ]; then
  echo "$dir already holds a CA; remove it to make new material" >&2
  exit 1
fi
ns=driftkv
"$driftkv" certs init --dir "$dir/ca" --name kubernetes
"$driftkv" certs issue --dir "$dir/ca" --node driftkv-central-0 --role central --out "$dir/central" \
  --host driftkv-central-0.driftkv-central --host "driftkv-central-0.driftkv-central.$ns.svc" \
  --host "driftkv-central-0.driftkv-central.$ns.svc.cluster.local" --host driftkv-central
"$driftkv" certs issue --dir "$dir/ca" --node driftkv-edge --role edge --out "$dir/edge" \
  --host "driftkv-edge.$ns" --host "driftkv-edge.$ns.svc" --host "driftkv-edge.$ns.svc.cluster.local" \
  --host "*.driftkv-edge-peers.$ns.svc.cluster.local"
umask 077
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/api-tokens"
echo "secrets in $dir; the API token is in $dir/api-tokens; clients trust $dir/ca/ca.pem"
