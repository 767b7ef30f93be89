#!/usr/bin/env bash
# Three simulated hosts on this machine, each in a network namespace of its own (run as root):
#
#   deploy/three-hosts.sh [--docker] [--keep-logs]        (or: ./dingo up --hosts 3 [--docker] [--keep-logs])
#
# host-1..3 get 10.214.7.11..13 (DINGO_HOSTS_NET=A.B.C picks another /24; it must overlap no address or route of
# this machine) on a bridge of their own, whose root-namespace side has .1 so this machine reaches the hosts. The
# hosts have no default route: nothing they send leaves the /24. On each host: an etcd member (one three-member
# cluster), a cell with its router, and on host-1 and host-2 a broker, as in docs/deploy.md. --docker: each host's
# cell drives a podman service of its own (nodes in containers, runtime = docker) instead of local processes.
#
# Processes are supervised: one that exits is started again after 2 s. Ctrl-C stops every process by PID (cells
# first, then brokers, then etcd), removes the namespaces, the bridge and veths, the containers (--docker) and
# every folder made under .dingo/hosts (--keep-logs keeps the *.log files). Logs: .dingo/hosts/<host>/<process>.log.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NET="${DINGO_HOSTS_NET:-10.214.7}"
STATE="$ROOT/.dingo/hosts"
RUN=/run/dingo-three-hosts
BRIDGE=dgh-br0
HOSTS=(host-1 host-2 host-3)
ZONES=(z1 z2 z3)
PLATFORM=dingo-three-hosts
DOCKER=0
KEEP_LOGS=0
DOTNET="$(command -v dotnet || true)"
BROKER_DLL="$ROOT/src/Dingo.Broker/bin/Release/net10.0/Dingo.Broker.dll"
CELL_DLL="$ROOT/src/Dingo.Cell/bin/Release/net10.0/Dingo.Cell.dll"

say() { printf 'three-hosts: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

for a in "$@"; do
  case "$a" in
    --docker) DOCKER=1 ;;
    --keep-logs) KEEP_LOGS=1 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$a' (--docker, --keep-logs)" ;;
  esac
done

[ "$(id -u)" = 0 ] || die "run as root: network namespaces need it"
[ -n "$DOTNET" ] || die "dotnet not found"
[ -f "$BROKER_DLL" ] && [ -f "$CELL_DLL" ] || die "build first: dotnet build -c Release (./dingo up --hosts 3 does it)"
[[ "$NET" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "DINGO_HOSTS_NET must be three octets, e.g. 10.214.7"
addr() { echo "$NET.$((11 + $1))"; }   # host index 0..2

# ---- what this run made, removed on exit (in reverse) ----
declare -a SUPERVISORS=() MADE_NS=() MADE_LINKS=() PODMANS=()
MADE_BRIDGE=0
MADE_STATE=0
MADE_DINGO=0
CLEANED=0

# The pid a supervisor last started, from its pid file.
child_pid() { local f="$STATE/$1/$2.pid"; [ -f "$f" ] && cat "$f" || true; }

stop_children() { # signal, then wait up to $2 s for the named processes on every host
  local name=$1 timeout=$2 pids=() h p
  for h in "${HOSTS[@]}"; do
    p="$(child_pid "$h" "$name")"
    [ -n "$p" ] && kill -0 "$p" 2>/dev/null && { kill -TERM "$p" 2>/dev/null || true; pids+=("$p"); }
  done
  local deadline=$((SECONDS + timeout))
  for p in "${pids[@]}"; do
    while kill -0 "$p" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    kill -0 "$p" 2>/dev/null && { say "$name (pid $p) still running after ${timeout}s: SIGKILL"; kill -KILL "$p" 2>/dev/null || true; }
  done
  return 0
}

cleanup() {
  [ "$CLEANED" = 1 ] && return 0
  CLEANED=1
  trap '' INT TERM HUP
  say "stopping"
  # Supervisors first, so nothing is restarted while it is being stopped.
  local p ns h
  for p in "${SUPERVISORS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${SUPERVISORS[@]}"; do wait "$p" 2>/dev/null || true; done
  # Cells stop their nodes (data kept until the folders go below); then brokers; etcd last.
  stop_children cell 40
  stop_children broker 15
  stop_children etcd 10
  # The engines before the sweep below would SIGKILL them (their containers stay, and are swept).
  for p in "${PODMANS[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  # Anything else left in our namespaces (PostgreSQL, conmon and containers, a probe): by pid.
  for ns in "${MADE_NS[@]}"; do
    for _ in 1 2 3 4 5; do
      local left; left="$(ip netns pids "$ns" 2>/dev/null || true)"
      [ -z "$left" ] && break
      for p in $left; do kill -KILL "$p" 2>/dev/null || true; done
      sleep 0.2
    done
  done
  if [ "$DOCKER" = 1 ] && command -v podman >/dev/null 2>&1; then
    local ids; ids="$(podman ps -aq --filter "label=dingo.platform=$PLATFORM" 2>/dev/null || true)"
    [ -n "$ids" ] && podman rm -f -t 0 $ids >/dev/null 2>&1 || true
    ids="$(podman volume ls -q --filter "label=dingo.platform=$PLATFORM" 2>/dev/null || true)"
    [ -n "$ids" ] && podman volume rm -f $ids >/dev/null 2>&1 || true
  fi
  for ns in "${MADE_LINKS[@]}"; do ip link del "$ns" 2>/dev/null || true; done
  for ns in "${MADE_NS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  [ "$MADE_BRIDGE" = 1 ] && { ip link del "$BRIDGE" 2>/dev/null || true; }
  rm -rf "$RUN"
  if [ "$MADE_STATE" = 1 ]; then
    if [ "$KEEP_LOGS" = 1 ]; then
      find "$STATE" -mindepth 1 ! -name '*.log' -type f -delete 2>/dev/null || true
      find "$STATE" -mindepth 1 -type d -empty -delete 2>/dev/null || true
      for h in "${HOSTS[@]}"; do rm -rf "$STATE/$h/etcd" "$STATE/$h/cell" "$STATE/$h/broker"; done
      say "logs kept in $STATE"
    else
      rm -rf "$STATE"
    fi
    [ "$MADE_DINGO" = 1 ] && rmdir "$ROOT/.dingo" 2>/dev/null || true
  fi
  local left=()
  for ns in "${HOSTS[@]}"; do [ -e "/run/netns/$ns" ] && left+=("netns $ns"); done
  [ -d "/sys/class/net/$BRIDGE" ] && left+=("bridge $BRIDGE")
  if [ "${#left[@]}" -gt 0 ]; then say "could not remove: ${left[*]}"; else say "stopped; namespaces, links and folders removed"; fi
}
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM
trap 'cleanup; exit 129' HUP
trap cleanup EXIT

# ---- checks before making anything ----
for h in "${HOSTS[@]}"; do [ -e "/run/netns/$h" ] && die "network namespace $h exists already (another run? remove it with: ip netns del $h)"; done
[ -d "/sys/class/net/$BRIDGE" ] && die "link $BRIDGE exists already (another run? remove it with: ip link del $BRIDGE)"
[ -e "$STATE" ] && die "$STATE exists already (another run, or one that was killed with SIGKILL: remove it)"

# The /24 must overlap no address or route here, so no host address ever means something outside the namespaces.
to_int() { local IFS=.; set -- $1; echo $(( ($1 << 24) | ($2 << 16) | ($3 << 8) | $4 )); }
overlaps() { # a/alen b/blen
  local a b la lb len mask
  a=$(to_int "${1%/*}"); la=${1#*/}; [ "$la" = "$1" ] && la=32
  b=$(to_int "${2%/*}"); lb=${2#*/}
  len=$(( la < lb ? la : lb )); [ "$len" = 0 ] && return 0
  mask=$(( (0xFFFFFFFF << (32 - len)) & 0xFFFFFFFF ))
  [ $(( a & mask )) = $(( b & mask )) ]
}
while read -r prefix; do
  [ -z "$prefix" ] && continue
  overlaps "$prefix" "$NET.0/24" && die "$NET.0/24 overlaps $prefix on this machine: set DINGO_HOSTS_NET to a free /24"
done < <( { ip -4 -o addr show | awk '{print $4}'; ip -4 route show table all | awk '$1 ~ /^[0-9]/ {print $1}'; } | sort -u)

# ---- namespaces on a bridge ----
say "creating ${HOSTS[*]} on $NET.0/24 (bridge $BRIDGE, $NET.1)"
ip link add name "$BRIDGE" type bridge; MADE_BRIDGE=1
ip addr add "$NET.1/24" dev "$BRIDGE"
ip link set "$BRIDGE" up
for i in 0 1 2; do
  h=${HOSTS[$i]}
  ip netns add "$h"; MADE_NS+=("$h")
  ip link add "dgh-v$((i + 1))" type veth peer name eth0 netns "$h"; MADE_LINKS+=("dgh-v$((i + 1))")
  ip link set "dgh-v$((i + 1))" master "$BRIDGE" up
  ip -n "$h" addr add "$(addr $i)/24" dev eth0
  ip -n "$h" link set lo up
  ip -n "$h" link set eth0 up
  # Nothing outside the /24: a stray lookup fails at once instead of leaving the machine.
  ip -n "$h" route replace unreachable default
done

[ -d "$ROOT/.dingo" ] || MADE_DINGO=1
mkdir -p "$STATE"; MADE_STATE=1
mkdir -p "$RUN" "$STATE/backups"
for h in "${HOSTS[@]}"; do mkdir -p "$STATE/$h"; done
# The cells run PostgreSQL as `postgres` (process runtime): it must reach its data under .dingo/hosts.
chmod 755 "$STATE" "$STATE"/*

# supervise HOST NAME [VAR=VALUE]... COMMAND...: runs COMMAND in HOST's namespace, again 2 s after it exits, until
# the supervisor gets SIGTERM. setsid keeps Ctrl-C from reaching the process directly: cleanup stops it in order.
supervise() {
  local h=$1 name=$2; shift 2
  local log="$STATE/$h/$name.log" pidfile="$STATE/$h/$name.pid"
  (
    stopping=0
    trap 'stopping=1' TERM
    trap '' INT
    while [ "$stopping" = 0 ]; do
      setsid nsenter --net="/run/netns/$h" -- env "$@" </dev/null >>"$log" 2>&1 &
      child=$!
      echo "$child" >"$pidfile"
      rc=0
      # SIGTERM ends the wait: the child is then cleanup's to stop, in order, by its pid.
      while [ "$stopping" = 0 ] && kill -0 "$child" 2>/dev/null; do wait "$child" 2>/dev/null && rc=0 || rc=$?; done
      [ "$stopping" = 1 ] && break
      printf '%s three-hosts: %s exited (%s); starting it again in 2 s\n' "$(date +%T)" "$name" "$rc" >>"$log"
      say "$h: $name exited ($rc); starting it again in 2 s (log: $log)"
      sleep 2 & wait $! || true
    done
  ) &
  SUPERVISORS+=("$!")
}

# ---- TLS: etcd's CA, each member's certificate and the client certificate; the brokers' CA and certificates ----
# deploy/certs.sh, as on real hosts (docs/deploy.md); files 0600, gone with the state folder at the end.
TLS="$STATE/tls"
DINGO_CERTS_SEAL_KEY=off "$ROOT/deploy/certs.sh" "$TLS" "host-1=$(addr 0)" "host-2=$(addr 1)" "host-3=$(addr 2)" 2>/dev/null \
  || die "deploy/certs.sh could not make the certificates (needs openssl)"
# Every process presents host-1's client certificate (CN=dingo): they are one platform; any host's would do.
ETCD_CA="$TLS/etcd-ca.pem"; ETCD_CERT="$TLS/host-1/etcd-client.pem"; ETCD_KEY="$TLS/host-1/etcd-client-key.pem"
BROKER_CA="$TLS/broker-ca.pem"
etcdctl_tls() { ETCDCTL_API=3 etcdctl --endpoints "$ENDPOINTS" --cacert "$ETCD_CA" --cert "$ETCD_CERT" --key "$ETCD_KEY" --dial-timeout 1s "$@"; }

# ---- etcd: one member per host, clients and peers over TLS with certificates of etcd's CA only ----
ENDPOINTS="https://$(addr 0):2379,https://$(addr 1):2379,https://$(addr 2):2379"
INITIAL="host-1=https://$(addr 0):2380,host-2=https://$(addr 1):2380,host-3=https://$(addr 2):2380"
for i in 0 1 2; do
  h=${HOSTS[$i]}; a=$(addr $i)
  (umask 077; mkdir -p "$STATE/$h/etcd")
  supervise "$h" etcd /usr/bin/etcd --name "$h" --data-dir "$STATE/$h/etcd" \
    --listen-client-urls "https://$a:2379" --advertise-client-urls "https://$a:2379" \
    --listen-peer-urls "https://$a:2380" --initial-advertise-peer-urls "https://$a:2380" \
    --cert-file "$TLS/$h/etcd-server.pem" --key-file "$TLS/$h/etcd-server-key.pem" --trusted-ca-file "$ETCD_CA" --client-cert-auth \
    --peer-cert-file "$TLS/$h/etcd-server.pem" --peer-key-file "$TLS/$h/etcd-server-key.pem" --peer-trusted-ca-file "$ETCD_CA" --peer-client-cert-auth \
    --initial-cluster "$INITIAL" --initial-cluster-state new --initial-cluster-token "$PLATFORM" \
    --heartbeat-interval 100 --election-timeout 1000 --pre-vote --log-level warn \
    --auto-compaction-mode periodic --auto-compaction-retention 5m
done
say "waiting for the etcd cluster ($ENDPOINTS)"
for _ in $(seq 1 60); do
  etcdctl_tls put /dingo-three-hosts/probe ok >/dev/null 2>&1 && break
  sleep 0.5
done
etcdctl_tls del /dingo-three-hosts/probe >/dev/null 2>&1 || die "the etcd cluster did not form (logs: $STATE/host-*/etcd.log)"
# etcd's users on: the processes' certificate (CN=dingo) reads and writes under /dingo/ only; root is the operator's.
"$ROOT/deploy/etcd-auth.sh" "$ENDPOINTS" "$ETCD_CA" "$TLS/etcd-root.pem" "$TLS/etcd-root-key.pem" /dingo \
  || die "could not turn on etcd's users (deploy/etcd-auth.sh)"

# ---- settings shared by every process (the environment wins over these) ----
PASSWORD="${DINGO_BROKER_PASSWORD:-$(head -c 18 /dev/urandom | base64 | tr -d '/+=' )}"
USERNAME="${DINGO_BROKER_USERNAME:-dingo}"
# The operator's admin API (/admin) has credentials of its own; the OSB ones above do not open it.
ADMIN_PASSWORD="${DINGO_BROKER_ADMIN_PASSWORD:-$(head -c 18 /dev/urandom | base64 | tr -d '/+=' )}"
ADMIN_USERNAME="${DINGO_BROKER_ADMIN_USERNAME:-dingo-admin}"
# Akka remoting is mutual TLS (docs/security.md): members' addresses are akka.ssl.tcp://.
SEEDS="akka.ssl.tcp://dingo@$(addr 0):4053,akka.ssl.tcp://dingo@$(addr 1):4053,akka.ssl.tcp://dingo@$(addr 0):4054,akka.ssl.tcp://dingo@$(addr 1):4054,akka.ssl.tcp://dingo@$(addr 2):4054"
CONF="$STATE/three-hosts.conf"
{
  echo "dingo.backups.store { kind = local, folder = \"$STATE/backups\" }"
  # The kernel path would need forwarding inside the namespaces; user space keeps them a plain /24.
  echo 'dingo.router.mode = userspace'
  # Beyond one host every PostgreSQL login goes over TLS (docs/security.md, "PostgreSQL TLS").
  echo 'dingo.postgres.require-tls = on'
  echo "dingo.cell.docker.platform = \"$PLATFORM\""
  if [ "$DOCKER" = 1 ]; then
    echo 'dingo.cell.runtime = docker'
    echo 'dingo.cell.docker.pull = never'
  fi
} >"$CONF"
for i in 0 1 2; do
  h=${HOSTS[$i]}
  echo "dingo.router.bind-address = \"$(addr $i)\"" >"$STATE/$h/host.conf"
  [ "$DOCKER" = 1 ] && echo "dingo.cell.docker.endpoint = \"unix://$RUN/$h-podman.sock\"" >>"$STATE/$h/host.conf"
done
# The platform's seal key (docs/security.md): kept outside the state folder, made 0600 on the first run.
SEAL_KEY_FILE="${DINGO_SEAL_KEY_FILE:-$ROOT/.secrets/three-hosts-seal.key}"
if [ ! -f "$SEAL_KEY_FILE" ]; then
  (umask 077; mkdir -p "$(dirname "$SEAL_KEY_FILE")"; head -c 32 /dev/urandom | base64 >"$SEAL_KEY_FILE")
fi
# Akka remoting over mutual TLS: a CA of this run and a certificate per host, and one for the console on this
# machine's side of the bridge (files 0600 from creation; removed with the state folder on exit). A folder of its own:
# deploy/certs.sh owns $TLS.
AKKA_TLS="$STATE/akka-tls"
"$ROOT/deploy/akka-certs.sh" "$AKKA_TLS" host-1="$(addr 0)" host-2="$(addr 1)" host-3="$(addr 2)" console="$NET.1" \
  || die "could not make the Akka TLS certificates (deploy/akka-certs.sh, openssl)"
COMMON=(DINGO_AKKA_TLS_CA="$AKKA_TLS/ca.crt" DINGO_ETCD_ENDPOINTS="$ENDPOINTS" DINGO_ETCD_CA_FILE="$ETCD_CA" DINGO_ETCD_CERT_FILE="$ETCD_CERT" DINGO_ETCD_KEY_FILE="$ETCD_KEY"
        DINGO_AKKA_SEEDS="$SEEDS" DINGO_BROKER_USERNAME="$USERNAME"
        DINGO_BROKER_PASSWORD="$PASSWORD" DINGO_BROKER_ADMIN_USERNAME="$ADMIN_USERNAME" DINGO_BROKER_ADMIN_PASSWORD="$ADMIN_PASSWORD" DINGO_BINDING_HOST="$(addr 0)" DINGO_SEAL_KEY_FILE="$SEAL_KEY_FILE" DOTNET_CLI_TELEMETRY_OPTOUT=1)

# ---- --docker: a podman service per host (shared image store; each cell sees only its own containers) ----
if [ "$DOCKER" = 1 ]; then
  command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 || die "--docker needs podman and runc (apt-get install podman runc)"
  podman image exists localhost/dingo/postgres:15 || { say "building the node image (deploy/images/build-local.sh)"; "$ROOT/deploy/images/build-local.sh"; }
  # Raising rlimits is not permitted in this machine's containers (machine-recipes.md).
  printf '[containers]\ndefault_ulimits = []\n' >"$RUN/containers.conf"
  for i in 0 1 2; do
    h=${HOSTS[$i]}
    # nsenter, not `ip netns exec`: that mounts a fresh /sys and runc then finds no cgroup hierarchy.
    CONTAINERS_CONF="$RUN/containers.conf" nsenter --net="/run/netns/$h" -- podman --runtime runc system service --time=0 \
      "unix://$RUN/$h-podman.sock" </dev/null >>"$STATE/$h/podman.log" 2>&1 &
    PODMANS+=("$!")
  done
  for i in 0 1 2; do
    for _ in $(seq 1 60); do [ -S "$RUN/${HOSTS[$i]}-podman.sock" ] && break; sleep 0.5; done
    [ -S "$RUN/${HOSTS[$i]}-podman.sock" ] || die "podman on ${HOSTS[$i]} did not start (log: $STATE/${HOSTS[$i]}/podman.log)"
  done
fi

# ---- brokers on host-1 and host-2 over HTTPS (the first broker up founds the Akka cluster, chosen in etcd) ----
for i in 0 1; do
  h=${HOSTS[$i]}; a=$(addr $i)
  mkdir -p "$STATE/$h/broker"
  supervise "$h" broker "${COMMON[@]}" DINGO_AKKA_TLS_CERTIFICATE="$AKKA_TLS/$h/akka.crt" DINGO_AKKA_TLS_KEY="$AKKA_TLS/$h/akka.key" DINGO_AKKA_HOSTNAME="$a" DINGO_AKKA_PORT=4053 DINGO_BROKER_URL="https://$a:8080" \
    DINGO_BROKER_CERT_FILE="$TLS/$h/broker.pem" DINGO_BROKER_KEY_FILE="$TLS/$h/broker-key.pem" \
    DINGO_DATA_DIR="$STATE/$h/broker" "$DOTNET" "$BROKER_DLL" --config "$ROOT/hocon/dingo.conf" --config "$CONF" --config "$STATE/$h/host.conf"
  say "waiting for the broker on $h (https://$a:8080)"
  for _ in $(seq 1 120); do curl -sf --cacert "$BROKER_CA" --max-time 1 "https://$a:8080/healthz" >/dev/null 2>&1 && break; sleep 0.5; done
  curl -sf --cacert "$BROKER_CA" --max-time 1 "https://$a:8080/healthz" >/dev/null 2>&1 || die "the broker on $h did not answer (log: $STATE/$h/broker.log)"
done

# ---- a cell (with its router) on every host ----
for i in 0 1 2; do
  h=${HOSTS[$i]}; a=$(addr $i)
  mkdir -p "$STATE/$h/cell"
  supervise "$h" cell "${COMMON[@]}" DINGO_AKKA_TLS_CERTIFICATE="$AKKA_TLS/$h/akka.crt" DINGO_AKKA_TLS_KEY="$AKKA_TLS/$h/akka.key" DINGO_AKKA_HOSTNAME="$a" DINGO_AKKA_PORT=4054 DINGO_CELL_ID="cell-$((i + 1))" \
    DINGO_CELL_ZONE="${ZONES[$i]}" DINGO_CELL_ADDRESS="$a" DINGO_DATA_DIR="$STATE/$h/cell" \
    "$DOTNET" "$CELL_DLL" --config "$ROOT/hocon/dingo.conf" --config "$CONF" --config "$STATE/$h/host.conf"
done
say "waiting for the three cells to register"
for _ in $(seq 1 120); do
  n="$(etcdctl_tls get --prefix --keys-only /dingo/cells/ 2>/dev/null | grep -c . || true)"
  [ "${n:-0}" -ge 3 ] && break
  sleep 0.5
done

cat <<EOF

Dingo PostgreSQL is up on three hosts ($([ "$DOCKER" = 1 ] && echo "Docker cells, a podman per host" || echo "process cells")).
  host-1 $(addr 0): etcd, broker, cell-1 (z1)
  host-2 $(addr 1): etcd, broker, cell-2 (z2)
  host-3 $(addr 2): etcd, cell-3 (z3)
  broker URLs:     https://$(addr 0):8080  https://$(addr 1):8080 (certificates of $BROKER_CA)
  broker username: $USERNAME
  broker password: $PASSWORD
  admin API:       $ADMIN_USERNAME / $ADMIN_PASSWORD (/admin and the ./dingo admin commands: DINGO_BROKER_ADMIN_USERNAME/PASSWORD)
  instances:       any host's address at the instance's port (bindings name $(addr 0))
  cells' health:   https://<host address>:8090/readyz and /metrics, certificates of the platform CA:
                   curl --cacert $STATE/host-1/cell/cells/cell-1/platform-ca.crt https://$(addr 0):8090/readyz

  etcd:            $ENDPOINTS over TLS: CA $ETCD_CA, client certificate $ETCD_CERT

  DINGO_ETCD_ENDPOINTS=$ENDPOINTS DINGO_ETCD_CA_FILE=$ETCD_CA DINGO_ETCD_CERT_FILE=$ETCD_CERT DINGO_ETCD_KEY_FILE=$ETCD_KEY DINGO_SEAL_KEY_FILE=$SEAL_KEY_FILE ./dingo status
  (its AKKA MEMBERS section asks a broker over TLS, as the operator: add
   DINGO_AKKA_HOSTNAME=$NET.1 DINGO_AKKA_SEEDS=$SEEDS DINGO_AKKA_TLS_CA=$AKKA_TLS/ca.crt
   DINGO_AKKA_TLS_CERTIFICATE=$AKKA_TLS/console/akka.crt DINGO_AKKA_TLS_KEY=$AKKA_TLS/console/akka.key DINGO_BROKER_ADMIN_PASSWORD=\$ADMIN_PASSWORD)
  curl -s --cacert $BROKER_CA -u $USERNAME:\$PASSWORD -H 'X-Broker-API-Version: 2.17' https://$(addr 1):8080/v2/catalog
  ip netns pids host-2        # what runs on a host; cut it off: ip link set dgh-v2 down (up to heal)
  logs: $STATE/<host>/{etcd,broker,cell}.log

Ctrl-C stops everything and removes the namespaces, links and folders.
EOF

while :; do sleep 1 & wait $! || true; done
