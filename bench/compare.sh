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
#      cluster, sync and async, against a single node
#   4. HTTP/2 over TLS with h2load
#
# Usage: bench/compare.sh            (DURATION=10 RUNS=3 CONNS=64 by default)
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
cargo build --release --quiet
BIN=$PWD/target/release/caracal

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
RUST_LOG=warn taskset -c 0 "$BIN" --config "$W/caracal.toml" 2>"$W/caracal.log" & PIDS+=($!)
for p in $B1 $NGX $HAP $CAR; do wait_port $p; done
until curl -sf -o /dev/null http://127.0.0.1:18815/ready; do sleep 0.1; done

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
median() { # reads lines "rps a b bad", prints the line with the median rps
  sort -n | awk '{ l[NR]=$0 } END { print l[int((NR+1)/2)] }'
}
run() { # name kind url [header]
  local f="$W/$1.runs"; : > "$f"
  for _ in $(seq "$RUNS"); do
    if [ "$2" = h2 ]; then h2_once "$3" >> "$f"; else wrk_once "$3" "${4:-}" >> "$f"; fi
  done
  median < "$f" > "$W/$1"
}

SESSION=$(curl -s -D - -o /dev/null "http://127.0.0.1:$CAR/login" | tr -d '\r' | sed -n 's/^set-cookie: JSESSIONID=\([^;]*\).*/\1/Ip')
[ -n "$SESSION" ] || { echo "caracal gave no session cookie" >&2; exit 1; }

echo "== 1. plain GET" >&2
run plain.caracal wrk "http://127.0.0.1:$CAR/"
run plain.nginx wrk "http://127.0.0.1:$NGX/"
run plain.haproxy wrk "http://127.0.0.1:$HAP/"
echo "== 2. sticky" >&2
run sticky.caracal wrk "http://127.0.0.1:$CAR/sticky" "Cookie: JSESSIONID=$SESSION"
run sticky.nginx wrk "http://127.0.0.1:$NGX/sticky" "Cookie: JSESSIONID=$SESSION"
run sticky.haproxy wrk "http://127.0.0.1:$HAP/sticky" "Cookie: JSESSIONID=s1~$SESSION"
echo "== 4. h2 over TLS" >&2
run h2.caracal h2 "https://127.0.0.1:$CAR_TLS/"
run h2.nginx h2 "https://127.0.0.1:$NGX_TLS/"
run h2.haproxy h2 "https://127.0.0.1:$HAP_TLS/"

echo "== 3. session writes (caracal)" >&2
run write.single wrk "http://127.0.0.1:$CAR/write" "Cookie: JSESSIONID=$SESSION"
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
  run "write.$mode" wrk "http://127.0.0.1:18831/write" "Cookie: JSESSIONID=$S"
  unrep=$(curl -s http://127.0.0.1:18841/metrics | awk '/^caracal_replication_unreplicated_writes_total/ {print $2}')
  echo "$mode: unreplicated writes $unrep" >&2
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
done

# ---- table ----
row() { # label file
  read -r rps a b bad < "$W/$2"
  printf "| %-34s | %9s | %8s | %8s | %s |\n" "$1" "$rps" "$a" "$b" "$bad"
}
ratio() { awk -v a="$(cut -d' ' -f1 "$W/$1")" -v b="$(cut -d' ' -f1 "$W/$2")" 'BEGIN { printf "%.2f", a/b }'; }
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F)"
echo "versions: $("$BIN" --version), $(nginx -v 2>&1 | cut -d/ -f2), HAProxy $(haproxy -v | head -1 | awk '{print $3}'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), $(h2load --version | head -1)"
echo "runs: $RUNS x ${DURATION}s each, median shown; wrk -t1 -c$CONNS; h2load -c16 -m16 (no percentiles: mean / max)"
echo
echo "| case | req/s | p50 ms (h2: mean) | p99 ms (h2: max) | non-2xx |"
echo "|---|---:|---:|---:|---|"
for p in caracal nginx haproxy; do row "1. plain GET, $p" plain.$p; done
for p in caracal nginx haproxy; do row "2. sticky cookie, $p" sticky.$p; done
for p in caracal nginx haproxy; do row "4. h2 over TLS, $p" h2.$p; done
row "3. session write, 1 node" write.single
row "3. session write, 3 nodes sync" write.sync
row "3. session write, 3 nodes async" write.async
echo
echo "ratios (req/s): plain caracal/nginx $(ratio plain.caracal plain.nginx), caracal/haproxy $(ratio plain.caracal plain.haproxy);"
echo "  sticky caracal/nginx $(ratio sticky.caracal sticky.nginx), caracal/haproxy $(ratio sticky.caracal sticky.haproxy);"
echo "  h2 caracal/nginx $(ratio h2.caracal h2.nginx), caracal/haproxy $(ratio h2.caracal h2.haproxy);"
echo "  writes 3-node sync / plain $(ratio write.sync plain.caracal), async / plain $(ratio write.async plain.caracal), 1-node / plain $(ratio write.single plain.caracal)"
