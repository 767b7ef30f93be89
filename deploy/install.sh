#!/usr/bin/env bash
# Installs Dingo's processes on this host from `dotnet publish` output (docs/deploy.md):
#
#   deploy/install.sh PUBLISH_DIR [CERTS_DIR]
#
# PUBLISH_DIR holds broker/, cell/ and cli/, published with
#   dotnet publish src/Dingo.Broker -c Release -r linux-x64 --self-contained false -p:PublishReadyToRun=true -o PUBLISH_DIR/broker   (and src/Dingo.Cell; src/Dingo.Cli without ReadyToRun)
# Run it as root from a checkout (it takes hocon/ and deploy/ from there). It:
#   - copies broker/, cell/ and cli/ to /opt/dingo/ and hocon/dingo.conf to /opt/dingo/hocon/ (replacing older copies:
#     running processes keep their files until restarted);
#   - installs the units in /etc/systemd/system/ and a `dingo` console wrapper in /usr/local/bin/;
#   - copies the example configuration to /etc/dingo/ only where a file is not there yet (never overwrites);
#   - with CERTS_DIR (this host's folder from deploy/certs.sh, e.g. certs/host-1): installs its PEM files in
#     /etc/dingo/tls (folder 0700, files 0600, owned by dingo: etcd and the broker run as dingo), never over a file
#     that is there; and its seal.key (the platform's, the same on every host) as /etc/dingo/keys/seal.key (folder
#     0700, file 0600, owned by dingo), never over a key that is there;
#   - creates the `dingo` system user and reloads systemd.
# It enables and starts nothing: docs/deploy.md says what to edit and in which order to start.
# DESTDIR=/some/dir installs under that folder instead (no user created, no systemd reload).
set -euo pipefail

say() { printf 'install.sh: %s\n' "$*" >&2; }
[ $# = 1 ] || [ $# = 2 ] || { say "usage: deploy/install.sh PUBLISH_DIR [CERTS_DIR]"; exit 2; }
SRC="$(cd "$1" && pwd)"
CERTS="${2:-}"
TLS_FILES=(etcd-ca.pem etcd-server.pem etcd-server-key.pem etcd-client.pem etcd-client-key.pem broker-ca.pem broker.pem broker-key.pem)
if [ -n "$CERTS" ]; then
  for f in "${TLS_FILES[@]}"; do [ -f "$CERTS/$f" ] || { say "$CERTS/$f is missing: make this host's folder with deploy/certs.sh (docs/deploy.md)"; exit 1; }; done
fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${DESTDIR:-}"

for part in broker/Dingo.Broker.dll cell/Dingo.Cell.dll cli/dingo.dll; do
  [ -f "$SRC/$part" ] || { say "$SRC/$part is missing: publish src/Dingo.Broker, src/Dingo.Cell and src/Dingo.Cli into $SRC (docs/deploy.md)"; exit 1; }
done
if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then say "run as root (or set DESTDIR)"; exit 1; fi

if [ -z "$ROOT" ] && ! id dingo >/dev/null 2>&1; then
  useradd --system --user-group --home-dir /var/lib/dingo --no-create-home --shell /usr/sbin/nologin dingo
  say "created the system user dingo"
fi

install -d -m 0755 "$ROOT/opt/dingo" "$ROOT/opt/dingo/hocon" "$ROOT/etc/systemd/system" "$ROOT/usr/local/bin"
for part in broker cell cli; do
  rm -rf "$ROOT/opt/dingo/$part.new"
  cp -R "$SRC/$part" "$ROOT/opt/dingo/$part.new"
  rm -rf "$ROOT/opt/dingo/$part"
  mv "$ROOT/opt/dingo/$part.new" "$ROOT/opt/dingo/$part"
done
install -m 0644 "$REPO/hocon/dingo.conf" "$ROOT/opt/dingo/hocon/dingo.conf"
install -m 0644 "$REPO"/deploy/systemd/dingo-{etcd,broker,cell}.service "$ROOT/etc/systemd/system/"

# The console on this host: the platform's settings from /etc/dingo/dingo.conf (`dingo up` is for one machine only).
cat >"$ROOT/usr/local/bin/dingo" <<'WRAPPER'
#!/bin/sh
case "${1:-}" in
  up) echo "dingo: 'up' starts a one-machine platform; this host runs Dingo under systemd (docs/deploy.md)" >&2; exit 2 ;;
  ""|help|-h|--help) exec /usr/bin/dotnet /opt/dingo/cli/dingo.dll "$@" ;;
esac
# The console checks the whole configuration (the store's keys included) and talks to a broker: it takes the
# DINGO_* lines of the env files the units read (root's), without overriding what the caller's environment sets;
# `members` asks the brokers over Akka as a client, from DINGO_AKKA_SEEDS and on DINGO_AKKA_HOSTNAME (a free port).
for file in /etc/dingo/dingo.env /etc/dingo/dingo-broker.env; do
  [ -r "$file" ] || continue
  while IFS='=' read -r key value; do
    case "$key" in DINGO_AKKA_PORT) ;; DINGO_*) [ -n "$(printenv "$key")" ] || export "$key=$value" ;; esac
  done <"$file"
done
DINGO_HOME=/opt/dingo exec /usr/bin/dotnet /opt/dingo/cli/dingo.dll "$@" --config /etc/dingo/dingo.conf
WRAPPER
chmod 0755 "$ROOT/usr/local/bin/dingo"

# Examples only where nothing is there yet: the env files hold this host's values and secrets (root only).
install -d -m 0755 "$ROOT/etc/dingo"
# Akka TLS certificates go here (docs/deploy.md): the broker runs as dingo and reads its key, so the folder is dingo's.
if [ ! -d "$ROOT/etc/dingo/tls" ]; then
  install -d -m 0700 "$ROOT/etc/dingo/tls"
  if [ -z "$ROOT" ]; then chown dingo:dingo "$ROOT/etc/dingo/tls"; fi
fi
[ -e "$ROOT/etc/dingo/dingo.conf" ] || install -m 0644 "$REPO/deploy/dingo.conf.example" "$ROOT/etc/dingo/dingo.conf"
for env in "$REPO"/deploy/systemd/env/*.env; do
  [ -e "$ROOT/etc/dingo/$(basename "$env")" ] || install -m 0600 "$env" "$ROOT/etc/dingo/"
done

# TLS material: etcd's member and client certificates, the brokers' certificate and both CAs (deploy/certs.sh).
# Owned by dingo (etcd and the broker run as dingo; the cell and the console run as root), readable by no one else.
if [ -n "$CERTS" ]; then
  owner=(); [ -z "$ROOT" ] && owner=(-o dingo -g dingo)
  install -d -m 0700 "${owner[@]}" "$ROOT/etc/dingo/tls"
  for f in "${TLS_FILES[@]}"; do
    [ -e "$ROOT/etc/dingo/tls/$f" ] || install -m 0600 "${owner[@]}" "$CERTS/$f" "$ROOT/etc/dingo/tls/$f"
  done
fi

# The platform's seal key (docs/security.md, "Secrets at rest"), where dingo.env's DINGO_SEAL_KEY_FILE names it. Never
# replaced: a host whose key differs from the others' could not open what they sealed.
if [ -n "$CERTS" ] && [ -f "$CERTS/seal.key" ]; then
  owner=(); [ -z "$ROOT" ] && owner=(-o dingo -g dingo)
  install -d -m 0700 "${owner[@]}" "$ROOT/etc/dingo/keys"
  if [ ! -e "$ROOT/etc/dingo/keys/seal.key" ]; then install -m 0600 "${owner[@]}" "$CERTS/seal.key" "$ROOT/etc/dingo/keys/seal.key"
  elif ! cmp -s "$CERTS/seal.key" "$ROOT/etc/dingo/keys/seal.key"; then say "warning: /etc/dingo/keys/seal.key differs from $CERTS/seal.key and was left alone: every host must hold the same first key (dingo rotate-key, docs/security.md)"; fi
fi
[ -e "$ROOT/etc/dingo/keys/seal.key" ] || say "warning: /etc/dingo/keys/seal.key is missing: brokers and cells refuse to start without the platform's seal key; run deploy/install.sh again with this host's folder from deploy/certs.sh (it holds seal.key)"
[ -e "$ROOT/etc/dingo/tls/etcd-ca.pem" ] || say "warning: /etc/dingo/tls has no certificates: etcd, brokers and cells speak TLS only; run deploy/install.sh again with this host's folder from deploy/certs.sh"
[ -x /usr/bin/dotnet ] || say "warning: /usr/bin/dotnet is missing: the units need the ASP.NET Core 10 runtime there"
[ -x /usr/bin/etcd ] || say "warning: /usr/bin/etcd is missing: apt-get install etcd-server, then systemctl disable --now etcd"
if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
say "installed in ${ROOT}/opt/dingo; now edit /etc/dingo/*.env for this host (docs/deploy.md)"
