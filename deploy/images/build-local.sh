#!/usr/bin/env bash
# Builds the PostgreSQL node image from this machine's Debian packages, for machines that reach no registry.
#
#   deploy/images/build-local.sh [IMAGE]        default IMAGE: localhost/dingo/postgres:15
#
# The image is self-contained: a root file system folder gets PostgreSQL 15's binaries, modules and share files,
# a shell and the few tools Dingo's one-shot steps use, every library `ldd` lists for them, the time zone data,
# and a `postgres` user (uid/gid 999, as in the postgres:15 image, so volumes move between the two images). It is
# imported with `podman import` (or `docker import` when podman is missing; DOCKER_HOST picks the engine).
# deploy/images/postgres/Dockerfile is the equivalent for real deployments.
set -euo pipefail

IMAGE="${1:-localhost/dingo/postgres:15}"
PG=/usr/lib/postgresql/15
say() { printf 'build-local: %s\n' "$*" >&2; }

[ -x "$PG/bin/postgres" ] || { say "PostgreSQL 15 is not installed ($PG/bin/postgres): apt-get install postgresql-15"; exit 1; }
if command -v podman >/dev/null 2>&1; then ENGINE=(podman)
elif command -v docker >/dev/null 2>&1; then ENGINE=(docker)
else say "neither podman nor docker is installed: apt-get install podman runc"; exit 1
fi

ROOTFS="$(mktemp -d /tmp/dingo-rootfs.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT

# The usr-merged skeleton Debian uses: /bin, /lib and /lib64 point into /usr.
mkdir -p "$ROOTFS"/usr/{bin,lib,lib64,share} "$ROOTFS"/{etc,tmp,var/run/postgresql,var/lib/postgresql/data}
ln -s usr/bin "$ROOTFS/bin"
ln -s usr/lib "$ROOTFS/lib"
ln -s usr/lib64 "$ROOTFS/lib64"
ln -s usr/bin "$ROOTFS/sbin"
chmod 1777 "$ROOTFS/tmp"

# PostgreSQL: server and client binaries, loadable modules (without the LLVM JIT: Dingo runs with jit = off and
# libLLVM alone would triple the image), and share files (catalog templates, time zone names, extensions).
mkdir -p "$ROOTFS$PG" "$ROOTFS/usr/share/postgresql"
cp -a "$PG/bin" "$ROOTFS$PG/"
mkdir -p "$ROOTFS$PG/lib"
find "$PG/lib" -maxdepth 1 -type f -name '*.so' ! -name 'llvmjit*.so' -exec cp -a {} "$ROOTFS$PG/lib/" \;
cp -a /usr/share/postgresql/15 "$ROOTFS/usr/share/postgresql/"
# Debian's PostgreSQL is built against the system's time zone database.
cp -a /usr/share/zoneinfo "$ROOTFS/usr/share/"
# The C.UTF-8 locale nodes are initialised with (glibc loads it from files, like any other locale).
mkdir -p "$ROOTFS/usr/lib/locale"
cp -a /usr/lib/locale/C.utf8 "$ROOTFS/usr/lib/locale/"

# The shell and tools the one-shot steps (initdb's helpers, file preparation) need. initdb and pg_rewind run
# postgres through /bin/sh.
TOOLS=(dash cat chmod cp ls mkdir mv rm sed sync touch grep env id sleep)
for t in "${TOOLS[@]}"; do
  src="$(command -v "$t")"
  cp -L "$src" "$ROOTFS/usr/bin/$t"
done
ln -sf dash "$ROOTFS/usr/bin/sh"

# Every shared library any binary or module links against, with the paths ldd resolved (and the loader).
libs() {
  find "$ROOTFS$PG/bin" "$ROOTFS$PG/lib" "$ROOTFS/usr/bin" -type f -print0 |
    xargs -0 -n 50 ldd 2>/dev/null |
    awk '/=> \// { print $3 } /^[ \t]*\/[^ ]+ \(0x/ { print $1 }' | sort -u
}
libs | while read -r lib; do
  [ -e "$lib" ] || continue
  mkdir -p "$ROOTFS$(dirname "$lib")"
  cp -L "$lib" "$ROOTFS$lib"
done
# pg_basebackup, psql and the walreceiver module load libpq from the system folder; ldd caught it above.

cat >"$ROOTFS/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
postgres:x:999:999:PostgreSQL:/var/lib/postgresql:/bin/sh
EOF
cat >"$ROOTFS/etc/group" <<'EOF'
root:x:0:
postgres:x:999:
EOF
echo 'passwd: files' >"$ROOTFS/etc/nsswitch.conf"
printf 'group: files\nhosts: files dns\n' >>"$ROOTFS/etc/nsswitch.conf"
echo '127.0.0.1 localhost' >"$ROOTFS/etc/hosts"
# An empty named volume takes the ownership and mode of the folder it is mounted on.
chown -R 999:999 "$ROOTFS/var/lib/postgresql" "$ROOTFS/var/run/postgresql"
chmod 0700 "$ROOTFS/var/lib/postgresql/data"
chmod 2775 "$ROOTFS/var/run/postgresql"

say "importing $(du -sh "$ROOTFS" | cut -f1) as $IMAGE with ${ENGINE[*]}"
tar --numeric-owner -C "$ROOTFS" -c . | "${ENGINE[@]}" import \
  --change "ENV PATH=$PG/bin:/usr/bin:/bin" \
  --change "ENV LANG=C.UTF-8" \
  --change "ENV PGDATA=/var/lib/postgresql/data/pgdata" \
  --change "USER postgres" \
  --change "WORKDIR /var/lib/postgresql" \
  --change "LABEL dingo.image=postgres dingo.postgres-version=15" \
  --change 'CMD ["postgres", "--version"]' \
  - "$IMAGE" >/dev/null
say "built $IMAGE"
