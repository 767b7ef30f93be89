#!/usr/bin/env bash
# Turns on etcd's users and roles for a Dingo platform (docs/security.md, docs/deploy.md), once, on a running cluster
# that requires client certificates (--client-cert-auth): etcd then takes a certificate's common name as the user.
#
#   deploy/etcd-auth.sh ENDPOINTS CA ROOT_CERT ROOT_KEY [PREFIX]
#
# ROOT_CERT/ROOT_KEY: a client certificate of etcd's CA with CN=root (deploy/certs.sh makes OUT/etcd-root.pem; keep it
# with the CA keys, off the hosts). Makes the users root (role root) and dingo (CN=dingo, the processes' certificate)
# with the role dingo: read and write under PREFIX/ (dingo.etcd.prefix, default /dingo) and nothing else. Users
# authenticate by certificate only (no passwords). Run again: what exists is kept; auth stays on.
set -euo pipefail

say() { printf 'etcd-auth.sh: %s\n' "$*" >&2; }
[ $# -ge 4 ] && [ $# -le 5 ] || { say "usage: deploy/etcd-auth.sh ENDPOINTS CA ROOT_CERT ROOT_KEY [PREFIX]"; exit 2; }
ENDPOINTS=$1; CA=$2; CERT=$3; KEY=$4; PREFIX="${5:-/dingo}"
PREFIX="${PREFIX%/}/"
[[ "$PREFIX" == /?* ]] || { say "the prefix must start with / (dingo.etcd.prefix): got '$PREFIX'"; exit 2; }
for f in "$CA" "$CERT" "$KEY"; do [ -r "$f" ] || { say "cannot read $f"; exit 1; }; done

ctl() { ETCDCTL_API=3 etcdctl --endpoints "$ENDPOINTS" --cacert "$CA" --cert "$CERT" --key "$KEY" --dial-timeout 2s --command-timeout 5s "$@"; }
# Creating what already exists fails with "already exists": keep going only on that.
ensure() {
  local out
  if out="$(ctl "$@" 2>&1)"; then return 0; fi
  case "$out" in *"already exists"*|*"already granted"*) return 0 ;; esac
  say "etcdctl $*: $out"; exit 1
}

ensure user add root --no-password
ensure user grant-role root root
ensure role add dingo
ensure role grant-permission dingo --prefix=true readwrite "$PREFIX"
ensure user add dingo --no-password
ensure user grant-role dingo dingo
out="$(ctl auth enable 2>&1)" || case "$out" in *"already enabled"*) ;; *) say "etcdctl auth enable: $out"; exit 1 ;; esac
say "etcd users on: root (role root), dingo (read/write under $PREFIX only)"
