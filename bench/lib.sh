# Shared by bench/ab.sh and bench/callgrind.sh (sourced): a work directory removed on exit
# with every process started into PIDS, the neutral nginx backend of compare.sh, and a
# one-node caracal conf in front of it. Everything listens on 127.0.0.1.

# bench_setup NAME B1 B2 CAR ADM [taskset-prefix...]: sets W, PIDS; starts the backend on
# B1 and B2; writes $W/caracal.toml (caracal on CAR, admin on ADM, `workers = 1`).
bench_setup() {
  local name=$1 b1=$2 b2=$3 car=$4 adm=$5
  shift 5
  W=$(mktemp -d "/tmp/caracal-$name.XXXXXX")
  PIDS=()
  trap bench_cleanup EXIT
  sed -e "s#__DIR__#$W#g" -e "s#__B1__#$b1#g" -e "s#__B2__#$b2#g" \
    bench/peers/backend.nginx.conf > "$W/backend.conf"
  "$@" nginx -c "$W/backend.conf" -e /dev/null & PIDS+=($!)
  cat > "$W/caracal.toml" <<CONF
[node]
jvm_route = "n1"
workers = 1
[http]
listen = ["127.0.0.1:$car"]
[admin]
listen = "127.0.0.1:$adm"
[backends]
servers = ["http://127.0.0.1:$b1", "http://127.0.0.1:$b2"]
[backends.health]
path = "/"
CONF
}

bench_cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
