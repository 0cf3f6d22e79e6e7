#!/usr/bin/env bash
# Interleaved wall-clock A/B of two caracal binaries on this machine: rounds alternate
# A, B (B, A on odd rounds), each a fresh node (`workers = 1`, pinned to core 0) behind the
# neutral nginx backend of compare.sh, wrk -t1 -c$CONNS pinned to core 1, plain GET then
# sticky (a live session's cookie). Prints req/s and caracal's CPU time per request
# (utime + stime from /proc, which round-to-round load moves less than req/s) per round,
# the medians per binary, and B/A.
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
B1=18871 B2=18872 CAR=18880 ADM=18885
# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_setup ab "$B1" "$B2" "$CAR" "$ADM" taskset -c 1

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
rps() { # pid url [header] -> "req/s cpu_us_per_request"
  local out t0 t1
  t0=$(ticks "$1")
  if [ -n "${3:-}" ]; then
    out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "$3" "$2")
  else
    out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" "$2")
  fi
  t1=$(ticks "$1")
  awk -v t="$((t1 - t0))" -v hz="$hz" '/Requests\/sec/ {r = $2} / requests in / {n = $1}
    END {printf "%d %.2f", r, t * 1e6 / hz / n}' <<<"$out"
}

one() { # bin -> "plain_rps plain_cpu sticky_rps sticky_cpu"
  RUST_LOG=warn taskset -c 0 "$1" --config "$W/caracal.toml" 2>/dev/null &
  local pid=$!
  until curl -sf -o /dev/null "http://127.0.0.1:$ADM/ready"; do sleep 0.1; done
  local s
  s=$(curl -s -D - -o /dev/null "http://127.0.0.1:$CAR/login" | tr -d '\r' | sed -n 's/^set-cookie: JSESSIONID=\([^;]*\).*/\1/Ip')
  rps "$pid" "http://127.0.0.1:$CAR/" >/dev/null # warm-up
  echo "$(rps "$pid" "http://127.0.0.1:$CAR/") $(rps "$pid" "http://127.0.0.1:$CAR/sticky" "Cookie: JSESSIONID=$s")"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

: > "$W/a" ; : > "$W/b"
for r in $(seq "$RUNS"); do
  if [ $((r % 2)) -eq 1 ]; then a=$(one "$A"); b=$(one "$B"); else b=$(one "$B"); a=$(one "$A"); fi
  echo "$a" >> "$W/a"; echo "$b" >> "$W/b"
  echo "round $r: A $a | B $b   (plain req/s, plain CPU us/req, sticky req/s, sticky CPU us/req)"
done
mid() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
for i in 1 2 3 4; do
  ma[$i]=$(cut -d' ' -f$i "$W/a" | mid); mb[$i]=$(cut -d' ' -f$i "$W/b" | mid)
done
echo "median A: plain ${ma[1]} req/s ${ma[2]} us/req, sticky ${ma[3]} req/s ${ma[4]} us/req"
echo "median B: plain ${mb[1]} req/s ${mb[2]} us/req, sticky ${mb[3]} req/s ${mb[4]} us/req"
awk -v a1="${ma[1]}" -v a2="${ma[2]}" -v a3="${ma[3]}" -v a4="${ma[4]}" \
    -v b1="${mb[1]}" -v b2="${mb[2]}" -v b3="${mb[3]}" -v b4="${mb[4]}" 'BEGIN {
  printf "B/A: plain req/s %.3f, CPU/req %.3f; sticky req/s %.3f, CPU/req %.3f\n", b1/a1, b2/a2, b3/a3, b4/a4 }'
