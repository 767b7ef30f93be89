#!/usr/bin/env bash
# Makes the certificates for Akka remoting over mutual TLS (docs/security.md, "Akka remoting over TLS"), with openssl:
#
#   deploy/akka-certs.sh DIR NAME=ADDRESS...        e.g. deploy/akka-certs.sh ./akka-tls host-1=10.0.0.11 host-2=10.0.0.12
#
#   DIR/ca.crt, DIR/ca.key   the platform's Akka CA: made on the first run and reused after, so a host added later gets
#                            a certificate every member accepts. ca.crt goes to every host (dingo.akka.tls.ca); keep
#                            ca.key OFF the platform's hosts: whoever holds it can make a certificate that joins.
#   DIR/NAME/akka.crt, .key  NAME's certificate (subject CN=NAME, SAN ADDRESS, serverAuth and clientAuth) and its key,
#                            issued only when NAME has none yet (dingo.akka.tls.certificate / .key on that host).
#
# Every file is created 0600 and every folder 0700 (umask 077: private from the first byte, never changed after writing). Certificates last
# DINGO_AKKA_CERT_DAYS days (825). To withdraw a host's certificate, make a new CA (a new DIR) and reissue every host.
set -euo pipefail

say() { printf 'akka-certs: %s\n' "$*" >&2; }
[ $# -ge 2 ] || { say "usage: deploy/akka-certs.sh DIR NAME=ADDRESS..."; exit 2; }
command -v openssl >/dev/null 2>&1 || { say "openssl is missing (apt-get install openssl)"; exit 1; }
DIR=$1; shift
DAYS="${DINGO_AKKA_CERT_DAYS:-825}"
umask 077
mkdir -p "$DIR"

if [ ! -f "$DIR/ca.crt" ] || [ ! -f "$DIR/ca.key" ]; then
  [ -e "$DIR/ca.crt" ] || [ -e "$DIR/ca.key" ] && { say "$DIR holds half a CA (ca.crt or ca.key alone): remove it or restore the other file"; exit 1; }
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days "$DAYS" \
    -subj "/CN=Dingo Akka CA $(date -u +%Y%m%d%H%M%S)" -keyout "$DIR/ca.key" -out "$DIR/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  say "made the CA $DIR/ca.crt (keep $DIR/ca.key off the hosts)"
fi

for spec in "$@"; do
  name=${spec%%=*}; address=${spec#*=}
  [[ "$spec" == *=* && "$name" =~ ^[A-Za-z0-9._-]+$ && -n "$address" ]] || { say "'$spec' is not NAME=ADDRESS"; exit 2; }
  out="$DIR/$name"
  if [ -f "$out/akka.crt" ] && [ -f "$out/akka.key" ]; then say "$name: has a certificate already ($out/akka.crt): kept"; continue; fi
  mkdir -p "$out"
  if [[ "$address" =~ ^[0-9.]+$ || "$address" == *:* ]]; then san="IP:$address"; else san="DNS:$address"; fi
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
    -keyout "$out/akka.key" -out "$out/akka.csr" 2>/dev/null
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' "$san" >"$out/ext.cnf"
  openssl x509 -req -in "$out/akka.csr" -CA "$DIR/ca.crt" -CAkey "$DIR/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
    -days "$DAYS" -sha256 -extfile "$out/ext.cnf" -out "$out/akka.crt" 2>/dev/null
  rm -f "$out/akka.csr" "$out/ext.cnf"
  openssl verify -CAfile "$DIR/ca.crt" "$out/akka.crt" >/dev/null || { say "$name: the new certificate does not verify against $DIR/ca.crt"; exit 1; }
  say "$name: $out/akka.crt and akka.key ($san)"
done
