#!/usr/bin/env bash
# Makes the platform's TLS material with openssl (docs/deploy.md, docs/security.md):
#
#   deploy/certs.sh OUT host-1=10.0.0.11 host-2=10.0.0.12 host-3=10.0.0.13
#
# Two small CAs in OUT (made once, reused by later runs): etcd-ca (etcd's server, peer and client certificates) and
# broker-ca (the brokers' HTTPS). Per host, a folder OUT/<name>/ holding everything that host needs in /etc/dingo/tls/:
#   etcd-ca.pem                      the CA etcd members and Dingo's processes trust (nothing else is trusted)
#   etcd-server.pem, -key.pem        the member's certificate: SAN = the host's address and 127.0.0.1; server and
#                                    client use (members present it to each other: --peer-client-cert-auth)
#   etcd-client.pem, -key.pem        the certificate brokers, cells and the console present to etcd (CN=dingo)
#   broker-ca.pem                    the CA the console trusts for the brokers' HTTPS (dingo.broker.tls.ca-file)
#   broker.pem, broker-key.pem       a broker's HTTPS certificate: SAN = the host's address (used where a broker runs)
#   seal.key                         the platform's seal key (docs/security.md, "Secrets at rest"): one for the whole
#                                    platform, made once as OUT/seal.key and copied into every host folder, since every
#                                    host must open what another sealed
# A host folder that exists is left alone (remove it to issue again, e.g. for a replaced host), except that one made
# before seal keys were part of it gets OUT/seal.key. Every file is created
# 0600 (umask 077; nothing is chmod-ed after writing). Keep OUT/*-ca-key.pem off the hosts: they issue certificates;
# and OUT/etcd-root.pem, etcd-root-key.pem (CN=root: etcd's root user once deploy/etcd-auth.sh turns users on).
# DINGO_CERT_DAYS (default 825) is how long a host's certificates are valid; the CAs get ten years.
set -euo pipefail
umask 077

say() { printf 'certs.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

[ $# -ge 2 ] || die "usage: deploy/certs.sh OUT NAME=ADDRESS... (e.g. host-1=10.0.0.11)"
command -v openssl >/dev/null 2>&1 || die "openssl is missing (apt-get install openssl)"
OUT="$1"; shift
DAYS="${DINGO_CERT_DAYS:-825}"
[[ "$DAYS" =~ ^[0-9]+$ ]] || die "DINGO_CERT_DAYS must be a number of days"
for host in "$@"; do
  [[ "$host" =~ ^[A-Za-z0-9._-]+=[0-9a-fA-F.:]+$ ]] || die "'$host' is not NAME=ADDRESS (an IP address)"
done
mkdir -p "$OUT"

# A CA: an EC P-256 key and a self-signed certificate allowed to sign certificates only.
ca() {
  local name=$1 subject=$2
  [ -f "$OUT/$name.pem" ] && [ -f "$OUT/$name-key.pem" ] && return 0
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days 3650 \
    -keyout "$OUT/$name-key.pem" -out "$OUT/$name.pem" -subj "/CN=$subject" \
    -addext basicConstraints=critical,CA:TRUE,pathlen:0 -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null \
    || die "openssl could not make the CA $name"
  say "made the CA $OUT/$name.pem"
}

# issue CA DIR NAME CN EXTENDED-KEY-USAGE [SAN]: DIR/NAME.pem and DIR/NAME-key.pem signed by CA.
issue() {
  local ca=$1 dir=$2 name=$3 cn=$4 usage=$5 san=${6:-}
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyAgreement"
    echo "extendedKeyUsage=$usage"
    [ -n "$san" ] && echo "subjectAltName=$san"
  } >"$dir/$name.ext"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
    -keyout "$dir/$name-key.pem" -out "$dir/$name.csr" -subj "/CN=$cn" 2>/dev/null \
    || die "openssl could not make the key of $dir/$name"
  openssl x509 -req -sha256 -days "$DAYS" -in "$dir/$name.csr" -CA "$OUT/$ca.pem" -CAkey "$OUT/$ca-key.pem" \
    -set_serial "0x$(openssl rand -hex 16)" -extfile "$dir/$name.ext" -out "$dir/$name.pem" 2>/dev/null \
    || die "openssl could not sign $dir/$name"
  rm -f "$dir/$name.csr" "$dir/$name.ext"
}

ca etcd-ca "Dingo etcd CA"
ca broker-ca "Dingo broker CA"
# etcd's root user (CN=root): for the operator to turn on and manage etcd's users (deploy/etcd-auth.sh); never on a host.
[ -f "$OUT/etcd-root.pem" ] || issue etcd-ca "$OUT" etcd-root root clientAuth

# The seal key: 32 random bytes, base64, one line (the format DINGO_SEAL_KEY_FILE takes). Written to a temporary name
# and moved, so an interrupted run never leaves a short key behind.
# DINGO_CERTS_SEAL_KEY=off: a caller that keeps the seal key elsewhere (deploy/three-hosts.sh: OUT is inside its state
# folder, and a seal key never lies beside the data it seals) gets none.
SEAL="${DINGO_CERTS_SEAL_KEY:-on}"
[ "$SEAL" = on ] || [ "$SEAL" = off ] || die "DINGO_CERTS_SEAL_KEY must be on or off"
if [ "$SEAL" = on ] && [ ! -s "$OUT/seal.key" ]; then
  openssl rand -base64 32 >"$OUT/seal.key.new" || die "openssl could not make the seal key"
  mv "$OUT/seal.key.new" "$OUT/seal.key"
  say "made the platform's seal key $OUT/seal.key (the same on every host; keep a copy off the hosts: without it no sealed password opens)"
fi

for host in "$@"; do
  name=${host%%=*}; address=${host#*=}
  dir="$OUT/$name"
  if [ -e "$dir" ]; then
    if [ "$SEAL" = on ] && [ ! -e "$dir/seal.key" ]; then cp "$OUT/seal.key" "$dir/seal.key.new" && mv "$dir/seal.key.new" "$dir/seal.key"; say "$dir exists: added the seal key"
    else say "$dir exists: left alone"; fi
    continue
  fi
  mkdir "$dir.new"
  cp "$OUT/etcd-ca.pem" "$OUT/broker-ca.pem" "$dir.new/"
  [ "$SEAL" = off ] || cp "$OUT/seal.key" "$dir.new/"
  issue etcd-ca "$dir.new" etcd-server "$name" serverAuth,clientAuth "IP:$address,IP:127.0.0.1"
  issue etcd-ca "$dir.new" etcd-client dingo clientAuth
  issue broker-ca "$dir.new" broker "$name" serverAuth "IP:$address"
  mv "$dir.new" "$dir"
  say "issued $dir (etcd member, etcd client, broker) for $address"
done
