#!/usr/bin/env bash
# Side-by-side: caracal vs nginx vs HAProxy on this machine, in one run (issue: bench).
#
# Each proxy runs ONE worker pinned to core 0 (caracal workers = 1, nginx
# worker_processes 1, haproxy nbthread 1); the load generator and the neutral backend (an
# nginx answering "ok") share core 1. Everything is on 127.0.0.1. Each case runs RUNS
# times for DURATION seconds; the table shows medians.
#   1. plain proxying of a small GET, upstream keep-alive
#   2. sticky traffic: a session cookie on every request (nginx: hash $cookie_JSESSIONID
#      consistent; HAProxy: cookie persistence; caracal: reads the session and sends it)
#   3. session writes (caracal only): one attribute written per request on a 3-node
#      cluster, sync and async, against a single node and against plain proxying measured
#      in the same minutes (alternating with the cluster runs)
#   4. HTTP/2 over TLS with h2load
#
# Usage: bench/compare.sh            (DURATION=10 RUNS=3 CONNS=64 by default; BIN=path)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
CONNS=${CONNS:-64}

need=()
for t in nginx haproxy wrk h2load taskset openssl curl; do command -v "$t" >/dev/null || need+=("$t"); done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: nginx haproxy wrk nghttp2-client (h2load) util-linux openssl curl" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx haproxy wrk nghttp2-client util-linux openssl curl >/dev/null
fi
# BIN=path: measure that binary (e.g. an older build, for a before/after) instead of this
# tree's release build.
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=$PWD/target/release/caracal
fi

W=$(mktemp -d /tmp/caracal-compare.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

B1=18801 B2=18802
CAR=18810 NGX=18811 HAP=18812
CAR_TLS=18820 NGX_TLS=18821 HAP_TLS=18822
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
  -keyout "$W/key.pem" -out "$W/cert.pem" >/dev/null 2>&1
cat "$W/cert.pem" "$W/key.pem" > "$W/combined.pem"

render() { # template plain tls admin -> file
  sed -e "s#__DIR__#$W#g" -e "s#__B1__#$B1#g" -e "s#__B2__#$B2#g" \
      -e "s#__PLAIN__#$2#g" -e "s#__TLS__#$3#g" -e "s#__ADMIN__#${4:-0}#g" "bench/peers/$1"
}
wait_port() { for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done; echo "port $1 never answered" >&2; return 1; }

render backend.nginx.conf 0 0 > "$W/backend.conf"
taskset -c 1 nginx -c "$W/backend.conf" -e /dev/null & PIDS+=($!)
render nginx.conf $NGX $NGX_TLS > "$W/nginx.conf"
taskset -c 0 nginx -c "$W/nginx.conf" -e /dev/null & PIDS+=($!)
render haproxy.cfg $HAP $HAP_TLS > "$W/haproxy.cfg"
taskset -c 0 haproxy -f "$W/haproxy.cfg" -db >/dev/null 2>&1 & PIDS+=($!)
render caracal.toml $CAR $CAR_TLS 18815 > "$W/caracal.toml"
# CARACAL_EXTRA: lines appended to caracal's conf, e.g. the access log:
#   CARACAL_EXTRA=$'[log]\naccess = "json"\naccess_path = "/tmp/access.log"' bench/compare.sh
[ -z "${CARACAL_EXTRA:-}" ] || printf '%s\n' "$CARACAL_EXTRA" >> "$W/caracal.toml"
RUST_LOG=warn taskset -c 0 "$BIN" --config "$W/caracal.toml" 2>"$W/caracal.log" & PIDS+=($!)
PID_CAR=$!
for p in $B1 $NGX $HAP $CAR; do wait_port $p; done
until curl -sf -o /dev/null http://127.0.0.1:18815/ready; do sleep 0.1; done
# The processes that do the proxying (nginx: its worker, not the master).
PID_NGX=$(pgrep -P "${PIDS[1]}" | head -1)
PID_HAP=${PIDS[2]}

# CPU ticks (utime + stime) used so far by the given processes.
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }

# One wrk run: prints "rps p50_ms p99_ms".
wrk_once() { # url [header]
  local out
  if [ -n "${2:-}" ]; then
    out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "$2" "$1")
  else
    out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$1")
  fi
  echo "$out" | awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec/ { rps=$2 } /^ +50%/ { p50=ms($2) } /^ +99%/ { p99=ms($2) }
    /Non-2xx/ { bad=$4 }
    END { printf "%.0f %.3f %.3f %s\n", rps, p50, p99, (bad==""?0:bad) }'
}
h2_once() { # url -> "rps mean_ms max_ms"
  taskset -c 1 h2load -D "$DURATION" -c 16 -m 16 -t 1 "$1" 2>/dev/null | awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /^finished in/ { gsub(",", "", $4); rps=$4 }
    /time for request:/ { mean=ms($6); max=ms($5) }
    /requests:/ && /succeeded/ { ok=$8 }
    END { printf "%.0f %.3f %.3f 0\n", rps, mean, max }'
}
# The middle value of the numbers on stdin, one per line.
mid() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
median() { # file of lines "rps p50 p99 bad cpu" -> the median of each column (bad: the sum)
  echo "$(cut -d' ' -f1 "$1" | mid) $(cut -d' ' -f2 "$1" | mid) $(cut -d' ' -f3 "$1" | mid)" \
    "$(awk '{ t += $4 } END { print t + 0 }' "$1") $(cut -d' ' -f5 "$1" | mid)"
}
once() { # name kind url header pids... : one run, appended to $W/name.runs with CPU us/request
  local name=$1 kind=$2 url=$3 hdr=$4; shift 4
  local t0 t1 line
  t0=$(ticks "$@")
  if [ "$kind" = h2 ]; then line=$(h2_once "$url"); else line=$(wrk_once "$url" "$hdr"); fi
  t1=$(ticks "$@")
  echo "$line" | awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v d="$DURATION" \
    '{ cpu = ($1 > 0) ? t * 1e6 / hz / ($1 * d) : 0; printf "%s %s %s %s %.2f\n", $1, $2, $3, $4, cpu }' >> "$W/$name.runs"
}
finish() { for n in "$@"; do median "$W/$n.runs" > "$W/$n"; done; }

SESSION=$(curl -s -D - -o /dev/null "http://127.0.0.1:$CAR/login" | tr -d '\r' | sed -n 's/^set-cookie: JSESSIONID=\([^;]*\).*/\1/Ip')
[ -n "$SESSION" ] || { echo "caracal gave no session cookie" >&2; exit 1; }

for r in $(seq "$RUNS"); do
  echo "== round $r/$RUNS: 1. plain GET, 2. sticky, 4. h2 over TLS" >&2
  once plain.caracal wrk "http://127.0.0.1:$CAR/" "" "$PID_CAR"
  once plain.nginx wrk "http://127.0.0.1:$NGX/" "" "$PID_NGX"
  once plain.haproxy wrk "http://127.0.0.1:$HAP/" "" "$PID_HAP"
  once sticky.caracal wrk "http://127.0.0.1:$CAR/sticky" "Cookie: JSESSIONID=$SESSION" "$PID_CAR"
  once sticky.nginx wrk "http://127.0.0.1:$NGX/sticky" "Cookie: JSESSIONID=$SESSION" "$PID_NGX"
  once sticky.haproxy wrk "http://127.0.0.1:$HAP/sticky" "Cookie: JSESSIONID=s1~$SESSION" "$PID_HAP"
  once h2.caracal h2 "https://127.0.0.1:$CAR_TLS/" "" "$PID_CAR"
  once h2.nginx h2 "https://127.0.0.1:$NGX_TLS/" "" "$PID_NGX"
  once h2.haproxy h2 "https://127.0.0.1:$HAP_TLS/" "" "$PID_HAP"
  once write.single wrk "http://127.0.0.1:$CAR/write" "Cookie: JSESSIONID=$SESSION" "$PID_CAR"
done
finish plain.caracal plain.nginx plain.haproxy sticky.caracal sticky.nginx sticky.haproxy \
  h2.caracal h2.nginx h2.haproxy write.single

echo "== 3. session writes (caracal, 3 nodes)" >&2
for mode in sync async; do
  pids=()
  for i in 1 2 3; do
    cat > "$W/c$mode$i.toml" <<CONF
[node]
jvm_route = "c$i"
workers = 1
[http]
listen = ["127.0.0.1:1883$i"]
[admin]
listen = "127.0.0.1:1884$i"
[backends]
servers = ["http://127.0.0.1:$B1", "http://127.0.0.1:$B2"]
[backends.health]
path = "/"
[cluster]
enabled = true
send_options = "$mode"
[cluster.membership]
port = 46990
domain = "compare-$$-$mode"
[cluster.receiver]
port = 0
CONF
    RUST_LOG=warn taskset -c 0 "$BIN" --config "$W/c$mode$i.toml" 2>>"$W/cluster.log" & pids+=($!); PIDS+=($!)
  done
  for i in 1 2 3; do until curl -sf -o /dev/null "http://127.0.0.1:1884$i/ready"; do sleep 0.1; done; done
  until [ "$(curl -s http://127.0.0.1:18841/status | grep -c '"jvm_route"')" -ge 3 ]; do sleep 0.1; done
  S=$(curl -s -D - -o /dev/null "http://127.0.0.1:18831/login" | tr -d '\r' | sed -n 's/^set-cookie: JSESSIONID=\([^;]*\).*/\1/Ip')
  # The plain reference is measured again next to each cluster run: this machine's speed
  # drifts over minutes, and the ratio should compare like with like.
  for _ in $(seq "$RUNS"); do
    once "near.$mode" wrk "http://127.0.0.1:$CAR/" "" "$PID_CAR"
    once "write.$mode" wrk "http://127.0.0.1:18831/write" "Cookie: JSESSIONID=$S" "${pids[@]}"
  done
  finish "write.$mode" "near.$mode"
  unrep=$(curl -s http://127.0.0.1:18841/metrics | awk '/^caracal_replication_unreplicated_writes_total/ {print $2}')
  echo "$mode: unreplicated writes $unrep" >&2
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
done

# ---- table ----
row() { # label file
  read -r rps a b bad cpu < "$W/$2"
  printf "| %-34s | %9s | %8s | %8s | %8s | %s |\n" "$1" "$rps" "$a" "$b" "$cpu" "$bad"
}
ratio() { awk -v a="$(cut -d' ' -f1 "$W/$1")" -v b="$(cut -d' ' -f1 "$W/$2")" 'BEGIN { printf "%.2f", a/b }'; }
cpuratio() { awk -v a="$(cut -d' ' -f5 "$W/$1")" -v b="$(cut -d' ' -f5 "$W/$2")" 'BEGIN { printf "%.2f", a/b }'; }
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F)"
echo "versions: $("$BIN" --version), nginx $(nginx -v 2>&1 | cut -d/ -f2), HAProxy $(haproxy -v | head -1 | awk '{print $3}'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), $(h2load --version | head -1)"
echo "runs: $RUNS interleaved rounds x ${DURATION}s, the median of each column (non-2xx: the total); wrk -t1 -c$CONNS; h2load -c16 -m16 (no percentiles: mean / max)"
echo "CPU us/req: the proxy process's CPU time per request (all three nodes for the cluster rows)"
echo
echo "| case | req/s | p50 ms (h2: mean) | p99 ms (h2: max) | CPU us/req | non-2xx |"
echo "|---|---:|---:|---:|---:|---|"
for p in caracal nginx haproxy; do row "1. plain GET, $p" plain.$p; done
for p in caracal nginx haproxy; do row "2. sticky cookie, $p" sticky.$p; done
for p in caracal nginx haproxy; do row "4. h2 over TLS, $p" h2.$p; done
row "3. session write, 1 node" write.single
row "3. session write, 3 nodes sync" write.sync
row "   plain GET, next to the sync runs" near.sync
row "3. session write, 3 nodes async" write.async
row "   plain GET, next to the async runs" near.async
echo
echo "ratios (req/s): plain caracal/nginx $(ratio plain.caracal plain.nginx), caracal/haproxy $(ratio plain.caracal plain.haproxy);"
echo "  sticky caracal/nginx $(ratio sticky.caracal sticky.nginx), caracal/haproxy $(ratio sticky.caracal sticky.haproxy);"
echo "  h2 caracal/nginx $(ratio h2.caracal h2.nginx), caracal/haproxy $(ratio h2.caracal h2.haproxy);"
echo "  writes 3-node sync / plain $(ratio write.sync near.sync), async / plain $(ratio write.async near.async) (plain measured next to them), 1-node / plain $(ratio write.single plain.caracal)"
# The goal's measure round by round: caracal against the faster peer of the same round
# (rounds are minutes apart and this machine drifts; the spread shows how far to trust a
# median).
vsbest() { # case -> "median (min-max), N of RUNS rounds >= 1.0"
  local r
  r=$(paste -d' ' <(cut -d' ' -f1 "$W/$1.caracal.runs") <(cut -d' ' -f1 "$W/$1.nginx.runs") \
    <(cut -d' ' -f1 "$W/$1.haproxy.runs") | awk '{ b = ($2 > $3) ? $2 : $3; printf "%.4f\n", $1 / b }')
  printf "%.2f (%.2f-%.2f), %d of %d rounds >= 1.0" "$(echo "$r" | mid)" \
    "$(echo "$r" | sort -g | head -1)" "$(echo "$r" | sort -g | tail -1)" \
    "$(echo "$r" | awk '$1 >= 1' | wc -l)" "$(echo "$r" | wc -l)"
}
echo "caracal / the faster peer of each round (req/s): plain $(vsbest plain); sticky $(vsbest sticky)"
echo "CPU per request: plain caracal/nginx $(cpuratio plain.caracal plain.nginx), caracal/haproxy $(cpuratio plain.caracal plain.haproxy);"
echo "  sticky caracal/nginx $(cpuratio sticky.caracal sticky.nginx), caracal/haproxy $(cpuratio sticky.caracal sticky.haproxy);"
echo "  h2 caracal/nginx $(cpuratio h2.caracal h2.nginx), caracal/haproxy $(cpuratio h2.caracal h2.haproxy)"
