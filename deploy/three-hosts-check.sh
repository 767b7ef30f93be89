#!/usr/bin/env bash
# End-to-end check of `./dingo up --hosts 3` as an operator and an application developer use it (root; builds first):
# TLS on every listener (broker, etcd, cells' health ports, PostgreSQL through the routers with verify-full), the
# dashboard, no secret in etcd or the backups folder, `./dingo status`, a base backup, then the primary's host cut off
# the network under a writer (no acknowledged commit lost), heal, unbind, deprovision, and a clean stop.
#
#   deploy/three-hosts-check.sh            exit 0 when every check held; the last line says how many failed
#
# It runs the platform itself (no other three-hosts run may be up) and stops it by PID at the end, also on failure;
# the hosts' logs are kept in .dingo/hosts (removed by the next run of deploy/three-hosts.sh).
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; cd "$REPO" || exit 2
[ "$(id -u)" = 0 ] || { echo "three-hosts-check: run as root (network namespaces)" >&2; exit 2; }
WORK="$(mktemp -d /tmp/dingo-three-hosts-check.XXXXXX)"
UP=
stop_up() { [ -n "$UP" ] && kill -0 "$UP" 2>/dev/null && { kill -TERM -- "-$UP" 2>/dev/null; wait "$UP" 2>/dev/null; }; UP=; }
trap 'stop_up; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM
OUT=$WORK/up.out; : > $OUT
export DINGO_BROKER_PASSWORD=check$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
step() { echo "== $(date +%T) $*"; }
FAILED=0
fail() { echo "FAIL: $*"; FAILED=$((FAILED + 1)); }
step "starting ./dingo up --hosts 3"
setsid ./dingo up --hosts 3 --keep-logs > $OUT 2>&1 < /dev/null &
UP=$!
for _ in $(seq 1 600); do grep -q 'is up on three hosts' $OUT && break; kill -0 $UP 2>/dev/null || break; sleep 1; done
grep -q 'is up on three hosts' $OUT || { fail "not up"; tail -30 $OUT; stop_up; exit 1; }
step "up"
T=$REPO/.dingo/hosts/tls
CA=$T/broker-ca.pem
H='X-Broker-API-Version: 2.17'
B1=https://10.214.7.11:8080; B2=https://10.214.7.12:8080
AUTH="dingo:$DINGO_BROKER_PASSWORD"
SERVICE=beb5973c-e1b2-11e5-a736-c7c0b526363d
HA=6e0b4f8a-3c1d-4b7e-9a52-d1f0c2e8b7a4
ETC=(env ETCDCTL_API=3 etcdctl --endpoints https://10.214.7.11:2379,https://10.214.7.12:2379,https://10.214.7.13:2379 --cacert $T/etcd-ca.pem --cert $T/host-1/etcd-client.pem --key $T/host-1/etcd-client-key.pem)
export DINGO_SEAL_KEY_FILE=$REPO/.secrets/three-hosts-seal.key DINGO_ETCD_ENDPOINTS=https://10.214.7.11:2379,https://10.214.7.12:2379,https://10.214.7.13:2379 DINGO_ETCD_CA_FILE=$T/etcd-ca.pem DINGO_ETCD_CERT_FILE=$T/host-1/etcd-client.pem DINGO_ETCD_KEY_FILE=$T/host-1/etcd-client-key.pem

step "broker: HTTPS with the CA; plain HTTP and a wrong CA refused"
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert $CA -u $AUTH -H "$H" $B2/v2/catalog); echo "catalog over https: $code"; [ "$code" = 200 ] || fail "catalog $code"
code=$(curl -s -o /dev/null -w '%{http_code}' -u $AUTH -H "$H" http://10.214.7.12:8080/v2/catalog); echo "catalog over plain http: $code (000 or 400 expected)"; [ "$code" = 200 ] && fail "plain http served"
curl -s -o /dev/null -u $AUTH -H "$H" $B2/v2/catalog && fail "no CA accepted" || echo "without the CA: refused (curl rc $?)"

step "etcd: no client certificate refused"
ETCDCTL_API=3 etcdctl --endpoints https://10.214.7.11:2379 --cacert $T/etcd-ca.pem --dial-timeout 2s --command-timeout 3s get --prefix /dingo/cells --keys-only >/dev/null 2>&1 && fail "etcd without cert" || echo "etcd without a client certificate: refused"

step "cells' health ports: HTTPS with the platform CA; plain HTTP refused"
PCA=$REPO/.dingo/hosts/host-1/cell/cells/cell-1/platform-ca.crt
for i in 1 2 3; do
  for _ in $(seq 1 30); do code=$(curl -s -o $WORK/ready.json -w '%{http_code}' --cacert $PCA https://10.214.7.1$i:8090/readyz); [ "$code" = 200 ] && break; sleep 1; done; echo "cell-$i readyz over https: $code $(cat $WORK/ready.json)"; [ "$code" = 200 ] || fail "cell-$i readyz $code"
  code=$(curl -s -o /dev/null -w '%{http_code}' http://10.214.7.1$i:8090/readyz); echo "cell-$i over plain http: $code"; [ "$code" = 200 ] && fail "cell-$i plain http served"
done
curl -s --cacert $PCA https://10.214.7.13:8090/metrics | grep -c '^dingo_' | sed 's/^/cell-3 metric lines: /'
ip netns exec host-2 env DINGO_CELL_ID=cell-2 DINGO_CELL_ADDRESS=10.214.7.12 DINGO_DATA_DIR=$REPO/.dingo/hosts/host-2/cell DINGO_SEAL_KEY_FILE=$REPO/.secrets/three-hosts-seal.key \
  dotnet $REPO/src/Dingo.Cell/bin/Release/net10.0/Dingo.Cell.dll probe --config $REPO/hocon/dingo.conf --config $REPO/.dingo/hosts/three-hosts.conf --config $REPO/.dingo/hosts/host-2/host.conf; echo "cell-2 probe exit $?"

step "provision cluster-ha"
t0=$(date +%s.%N)
curl -s --cacert $CA -u $AUTH -X PUT -H "$H" -H 'Content-Type: application/json' "$B1/v2/service_instances/h3-db?accepts_incomplete=true" \
  -d "{\"service_id\":\"$SERVICE\",\"plan_id\":\"$HA\",\"organization_guid\":\"org\",\"space_guid\":\"space\"}" > $WORK/prov.json; jq -c '{operation, dashboard: (.dashboard_url|sub("t=.*";"t=…"))}' $WORK/prov.json
for _ in $(seq 1 180); do
  s=$(curl -s --cacert $CA -u $AUTH -H "$H" $B2/v2/service_instances/h3-db/last_operation)
  echo "$s" | grep -q '"succeeded"\|"failed"' && break; sleep 1
done
echo "last_operation: $s after $(echo "$(date +%s.%N) - $t0" | bc) s"; echo "$s" | grep -q succeeded || fail provision

step "dashboard over HTTPS"
DASH=$(jq -r .dashboard_url $WORK/prov.json)
code=$(curl -s -o $WORK/dash.html -w '%{http_code}' --cacert $CA "$DASH"); echo "dashboard page: $code $(grep -c 'Dingo PostgreSQL' $WORK/dash.html) title line(s)"; [ "$code" = 200 ] || fail "dashboard $code"
curl -s --cacert $CA "${DASH/\?t=/\/state?t=}" | jq -c '{primary, nodes: [.nodes[] | {id, cell, role, state}]}'
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert $CA "${DASH%?t=*}?t=wrong"); echo "dashboard with a wrong secret: $code"; [ "$code" = 404 ] || fail "dashboard wrong secret $code"

step "bind"
curl -s --cacert $CA -u $AUTH -X PUT -H "$H" -H 'Content-Type: application/json' "$B2/v2/service_instances/h3-db/service_bindings/b1" \
  -d "{\"service_id\":\"$SERVICE\",\"plan_id\":\"$HA\",\"app_guid\":\"app\"}" > $WORK/binding.json
jq -r '.credentials | {host, port, username, sslmode: (.uri|capture("sslmode=(?<m>[a-z-]+)").m)}' $WORK/binding.json
jq -r .credentials.ca_certificate $WORK/binding.json > $WORK/ca.pem
URI=$(jq -r .credentials.uri $WORK/binding.json); RO=$(jq -r .credentials.read_only_uri $WORK/binding.json)
PASS=$(jq -r .credentials.password $WORK/binding.json); PORT=$(jq -r .credentials.port $WORK/binding.json)

step "psql verify-full through the router"
psql "$URI&sslrootcert=$WORK/ca.pem" -Atc "create table t(i int); insert into t values (1); select ssl, version from pg_stat_ssl where pid = pg_backend_pid()" || fail "verify-full"
psql "$RO&sslrootcert=$WORK/ca.pem" -Atc "select 'read-only', pg_is_in_recovery(), (select ssl from pg_stat_ssl where pid = pg_backend_pid())" || fail "read-only verify-full"
for a in 10.214.7.12 10.214.7.13; do
  u=${URI/10.214.7.11/$a}
  psql "$u&sslrootcert=$WORK/ca.pem" -Atc "select 'via $a', ssl from pg_stat_ssl where pid = pg_backend_pid()" || echo "via $a with verify-full: refused (the certificate may not name $a)"
done
psql "${URI/sslmode=verify-full/sslmode=disable}" -Atc 'select 1' 2>&1 | head -2; psql "${URI/sslmode=verify-full/sslmode=disable}" -Atc 'select 1' >/dev/null 2>&1 && fail "sslmode=disable served"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $WORK/other.key -out $WORK/other.pem -subj /CN=other -days 1 2>/dev/null
psql "$URI&sslrootcert=$WORK/other.pem" -Atc 'select 1' >/dev/null 2>&1 && fail "another CA accepted" || echo "another CA: refused"

step "secrets at rest: the binding password in etcd raw and in the backups folder"
"${ETC[@]}" get --prefix /dingo/ > $WORK/etcd-raw.txt 2>&1; wc -c $WORK/etcd-raw.txt; grep -c "^/dingo/" $WORK/etcd-raw.txt | sed "s/^/keys: /"; grep -q "^/dingo/instances/h3-db" $WORK/etcd-raw.txt || fail "etcd dump has no instance record"
grep -c -F "$PASS" $WORK/etcd-raw.txt && fail "binding password in etcd" || echo "binding password: not in etcd"
grep -c -F "$DINGO_BROKER_PASSWORD" $WORK/etcd-raw.txt && fail "broker password in etcd" || echo "broker password: not in etcd"
grep -rl -F "$PASS" $REPO/.dingo/hosts/backups && fail "binding password in backups" || echo "binding password: not in the backups folder"
find $REPO/.dingo/hosts/backups -type f -perm /077 | head -3

step "./dingo status over TLS; a base backup taken"
for _ in $(seq 1 60); do ./dingo status > $WORK/status.txt 2>&1; awk '/^BACKUPS/{f=1} f && /h3-db/' $WORK/status.txt | grep -q 'none yet' || break; sleep 2; done
cat $WORK/status.txt | head -40
awk '/^BACKUPS/{f=1} f && /h3-db/' $WORK/status.txt | grep -q 'none yet\|failing' && fail "no base backup"

step "failover: cut the primary's host off the network"
PRIM=$(./dingo status 2>/dev/null | awk '/h3-db/{f=1} f && /primary/ {print; exit}')
echo "primary line: $PRIM"
CELL=$(echo "$PRIM" | grep -o 'cell-[123]' | head -1)
N=${CELL#cell-}; echo "cutting host-$N (dgh-v$N)"
OTHER=$(( N == 1 ? 2 : 1 )); VIA=10.214.7.1$OTHER
U2=${URI/10.214.7.11/$VIA}; U2=${U2/sslmode=verify-full/sslmode=verify-ca}   # the node certificates name the binding host (host-1), not the other routers
# a writer through a surviving host's router, one insert per 100 ms
( i=0; while :; do i=$((i+1)); if psql "$U2&sslrootcert=$WORK/ca.pem&connect_timeout=2" -Atc "insert into t values ($i)" >/dev/null 2>&1; then echo "$(date +%s.%N) ok $i"; else echo "$(date +%s.%N) err $i"; fi; sleep 0.1; done ) > $WORK/writer.log 2>&1 &
W=$!
sleep 3
tc=$(date +%s.%N); ip link set dgh-v$N down; echo "cut at $tc"
sleep 25
kill $W; wait $W 2>/dev/null
awk -v tc=$tc '$2 == "ok" { if (prev && $1 > tc && $1 - prev > max) max = $1 - prev; prev = $1 } END { printf "longest time without an acknowledged commit after the cut: %.2f s\n", max }' $WORK/writer.log
echo "writer: $(grep -c ok $WORK/writer.log) commits acknowledged, $(grep -c err $WORK/writer.log) attempts failed (during the failover)"
psql "$U2&sslrootcert=$WORK/ca.pem" -Atc "select 'after failover', inet_server_addr(), ssl from pg_stat_ssl where pid = pg_backend_pid()" || fail "after failover"
OKS=$(awk '$2=="ok"{print $3}' $WORK/writer.log | sort -n | tr '\n' ' ')
psql "$U2&sslrootcert=$WORK/ca.pem" -Atc "select count(*) from t where i > 1" 
echo "acknowledged inserts: $(awk '$2=="ok"' $WORK/writer.log | wc -l)"
MISSING=0; for i in $OKS; do [ "$(psql "$U2&sslrootcert=$WORK/ca.pem" -Atc "select count(*) >= 1 from t where i = $i")" = t ] || MISSING=$((MISSING+1)); done; echo "acknowledged but missing: $MISSING"; [ $MISSING = 0 ] || fail "lost commits"
step "heal"
ip link set dgh-v$N up; sleep 20
./dingo status 2>&1 | awk '/h3-db/{f=1} f' | head -12

step "unbind, deprovision"
curl -s --cacert $CA -u $AUTH -X DELETE -H "$H" "$B2/v2/service_instances/h3-db/service_bindings/b1?service_id=$SERVICE&plan_id=$HA"; echo
psql "$U2&sslrootcert=$WORK/ca.pem" -Atc 'select 1' >/dev/null 2>&1 && fail "unbound role still logs in" || echo "unbound role: refused"
curl -s --cacert $CA -u $AUTH -X DELETE -H "$H" "$B2/v2/service_instances/h3-db?accepts_incomplete=true&service_id=$SERVICE&plan_id=$HA"; echo
for _ in $(seq 1 60); do s=$(curl -s --cacert $CA -u $AUTH -H "$H" "$B2/v2/service_instances/h3-db/last_operation"); echo "$s" | grep -q 'succeeded\|"failed"\|Gone' && break; [ -z "$s" ] && break; sleep 1; done; echo "deprovision: $s"

step "stop (SIGTERM to ./dingo up)"
kill -TERM -- -$UP; wait $UP; echo "up exited $?"; UP=
tail -3 $OUT
ip netns list | grep -q host- && fail "namespaces left"
pgrep -af 'Dingo\.(Broker|Cell)|etcd --name host' && fail "processes left"
if [ "$FAILED" = 0 ]; then echo "three-hosts-check: every check held"; else echo "three-hosts-check: $FAILED check(s) failed"; exit 1; fi
