#!/usr/bin/env bash
# User-space instructions per request, by callgrind: repeatable on a noisy machine, so an
# A/B of two binaries needs no interleaving. For each binary given (default: this tree's
# release build): caracal (`workers = 1`, one node) under valgrind behind the neutral nginx
# backend of compare.sh; h2load --h1 -c16 -t1; per case 2 000 warm-up requests, counters
# zeroed, N (default 20 000) requests, a dump; prints instructions / N.
# Cases: plain GET (no cookie), sticky (a live session's cookie), write (a session write
# per request: the backend's /write sets an attribute).
#
# Usage: bench/callgrind.sh [BIN ...]   (env: N=20000; CASES="plain sticky write"; KEEP=DIR
# keeps the profiles there, for callgrind_annotate)
# All traffic is on 127.0.0.1 (ports 188xx).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20000}
need=()
for t in nginx h2load valgrind curl; do command -v "$t" >/dev/null || need+=("$t"); done
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing: nginx nghttp2-client valgrind curl" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx nghttp2-client valgrind curl >/dev/null
fi
[ "$#" -gt 0 ] || { cargo build --release -q; set -- "$PWD/target/release/caracal"; }

B1=18851 B2=18852 CAR=18860 ADM=18865
# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_setup callgrind "$B1" "$B2" "$CAR" "$ADM"

load() { # n url [cookie]
  if [ -n "${3:-}" ]; then
    h2load --h1 -c16 -t1 -n "$1" -H "cookie: JSESSIONID=$3" "$2" >/dev/null
  else
    h2load --h1 -c16 -t1 -n "$1" "$2" >/dev/null
  fi
}

for bin in "$@"; do
  rm -f "$W"/callgrind.out.*
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$W/callgrind.out.%p" \
    "$bin" --config "$W/caracal.toml" 2>"$W/valgrind.log" &
  vg=$!
  PIDS+=($vg)
  for _ in $(seq 600); do curl -sf -o /dev/null "http://127.0.0.1:$ADM/ready" && break; sleep 0.1; done
  S=$(curl -s -D - -o /dev/null "http://127.0.0.1:$CAR/login" | tr -d '\r' | sed -n 's/^set-cookie: JSESSIONID=\([^;]*\).*/\1/Ip')
  [ -n "$S" ] || { echo "no session from /login" >&2; exit 1; }
  label="$(basename "$(dirname "$(dirname "$(dirname "$bin")")")")"
  line="$label"
  for case in ${CASES:-plain sticky write}; do
    case $case in
      plain) url="http://127.0.0.1:$CAR/"; c="" ;;
      sticky) url="http://127.0.0.1:$CAR/sticky"; c="$S" ;;
      write) url="http://127.0.0.1:$CAR/write"; c="$S" ;;
    esac
    load 2000 "$url" "$c"
    callgrind_control -z "$vg" >/dev/null
    load "$N" "$url" "$c"
    callgrind_control -d "$vg" >/dev/null
    f=$(ls -t "$W"/callgrind.out.* | head -1)
    ir=$(awk '/^summary:/ {print $2}' "$f")
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; cp "$f" "$KEEP/$label-$case.out"; fi
    line="$line $case=$((ir / N))"
  done
  echo "$line"
  kill "$vg" 2>/dev/null || true
  wait "$vg" 2>/dev/null || true
done
