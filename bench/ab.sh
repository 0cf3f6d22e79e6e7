#!/usr/bin/env bash
# Interleaved wall-clock A/B of two caracal binaries on this machine: rounds alternate
# A, B (B, A on odd rounds), each a fresh node (`workers = 1`, pinned to core 0) behind the
# neutral nginx backend of compare.sh, wrk -t1 -c$CONNS pinned to core 1, plain GET then
# sticky (a live session's cookie). Prints req/s per round and the median per binary, and
# B/A per round.
#
# Usage: bench/ab.sh A_BIN B_BIN   (env: RUNS=5 DURATION=8 CONNS=64). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1 B=$2
RUNS=${RUNS:-5} DURATION=${DURATION:-8} CONNS=${CONNS:-64}
for t in nginx wrk taskset curl; do
  command -v "$t" >/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk util-linux curl >/dev/null
    break
  }
done
W=$(mktemp -d /tmp/caracal-ab.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
B1=18871 B2=18872 CAR=18880 ADM=18885
sed -e "s#__DIR__#$W#g" -e "s#__B1__#$B1#g" -e "s#__B2__#$B2#g" bench/peers/backend.nginx.conf > "$W/backend.conf"
taskset -c 1 nginx -c "$W/backend.conf" -e /dev/null & PIDS+=($!)
cat > "$W/caracal.toml" <<CONF
[node]
jvm_route = "n1"
workers = 1
[http]
listen = ["127.0.0.1:$CAR"]
[admin]
listen = "127.0.0.1:$ADM"
[backends]
servers = ["http://127.0.0.1:$B1", "http://127.0.0.1:$B2"]
[backends.health]
path = "/"
CONF

rps() { # url [header]
  local out
  if [ -n "${2:-}" ]; then
    out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "$2" "$1")
  else
    out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" "$1")
  fi
  awk '/Requests\/sec/ {print int($2)}' <<<"$out"
}

one() { # bin -> "plain sticky"
  RUST_LOG=warn taskset -c 0 "$1" --config "$W/caracal.toml" 2>/dev/null &
  local pid=$!
  until curl -sf -o /dev/null "http://127.0.0.1:$ADM/ready"; do sleep 0.1; done
  local s
  s=$(curl -s -D - -o /dev/null "http://127.0.0.1:$CAR/login" | tr -d '\r' | sed -n 's/^set-cookie: JSESSIONID=\([^;]*\).*/\1/Ip')
  rps "http://127.0.0.1:$CAR/" >/dev/null # warm-up
  echo "$(rps "http://127.0.0.1:$CAR/") $(rps "http://127.0.0.1:$CAR/sticky" "Cookie: JSESSIONID=$s")"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

: > "$W/a" ; : > "$W/b"
for r in $(seq "$RUNS"); do
  if [ $((r % 2)) -eq 1 ]; then a=$(one "$A"); b=$(one "$B"); else b=$(one "$B"); a=$(one "$A"); fi
  echo "$a" >> "$W/a"; echo "$b" >> "$W/b"
  read -r ap as <<<"$a"; read -r bp bs <<<"$b"
  awk -v r="$r" -v ap="$ap" -v as="$as" -v bp="$bp" -v bs="$bs" 'BEGIN {
    printf "round %d: A plain %d sticky %d | B plain %d sticky %d | B/A plain %.3f sticky %.3f\n", r, ap, as, bp, bs, bp/ap, bs/as }'
done
mid() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
ap=$(cut -d' ' -f1 "$W/a" | mid); as=$(cut -d' ' -f2 "$W/a" | mid)
bp=$(cut -d' ' -f1 "$W/b" | mid); bs=$(cut -d' ' -f2 "$W/b" | mid)
awk -v ap="$ap" -v as="$as" -v bp="$bp" -v bs="$bs" 'BEGIN {
  printf "median req/s: A plain %d sticky %d | B plain %d sticky %d | B/A plain %.3f sticky %.3f\n", ap, as, bp, bs, bp/ap, bs/as }'
