#!/usr/bin/env bash
# Issue 21's benchmark: CPU per delivery with tracing off, and on at 100 % sampling (with a
# collector that answers at once), side by side in one run; with BASE=<hooksign binary> (for
# example the previous commit's release build) a third instance, the binary before OpenTelemetry,
# runs in the same rounds.
#
#   bash benches/otel.sh                      # DURATION=10 WARMUP=3 CONNS=64 ROUNDS=3
#   BASE=/path/to/old/hooksign bash benches/otel.sh
#
# Layout as benches/load.sh (2 cores): the hooksign under test on PROXY_CORE; wrk and the TLS
# upstream (nginx, a fixed 200; it is also the OTLP collector, answering POST /v1/traces with 200
# on a plain-HTTP port) on LOAD_CORE. Every round runs each instance once, in turn, each after its
# own warm-up; the table shows the medians, and the per-round ratios show the spread. CPU per
# request is utime+stime of the whole process (the span export thread included) over the measured
# run, divided by wrk's requests. Spans dropped by the traced instance are printed (they must be
# 0, or it did less work than it should). Only processes started here are stopped, by PID.
set -euo pipefail

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
UP_PORT=${UP_PORT:-18443}
OTLP_PORT=${OTLP_PORT:-18318}
BASE_PORT=18181 OFF_PORT=18182 ON_PORT=18183
case $ROUNDS in '' | *[!0-9]* | 0) echo "ROUNDS must be a positive integer" >&2; exit 1 ;; esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/hooksign-otel-bench.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
say() { printf '== %s\n' "$*" >&2; }

for tool in nginx wrk openssl curl python3; do
    command -v "$tool" >/dev/null || { echo "$tool is needed (see benches/load.sh)" >&2; exit 1; }
done
if [ -z "${HOOKSIGN:-}" ]; then
    say "building hooksign (release)"
    (cd "$ROOT" && cargo build --release --quiet --bin hooksign)
    HOOKSIGN="${CARGO_TARGET_DIR:-$ROOT/target}/release/hooksign"
fi

cd "$WORK"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=hooksign bench CA" -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=localhost" -keyout leaf.key -out leaf.csr 2>/dev/null
printf 'basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n' > leaf.ext
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile leaf.ext -out leaf.pem 2>/dev/null

mkdir -p up
cat > up/nginx.conf <<EOF
worker_processes 1;
daemon off;
pid $WORK/up/nginx.pid;
error_log $WORK/up/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/up/body;
    client_max_body_size 16m;
    client_body_buffer_size 16m;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server {
        listen 127.0.0.1:$UP_PORT ssl;
        ssl_certificate $WORK/leaf.pem;
        ssl_certificate_key $WORK/leaf.key;
        location / { return 200 "ok\n"; }
    }
    server {
        listen 127.0.0.1:$OTLP_PORT;
        location = /v1/traces { return 200 ""; }
    }
}
EOF
taskset -c "$LOAD_CORE" nginx -c "$WORK/up/nginx.conf" -p "$WORK/up" &
PIDS+=($!)

TARGET=5f0c9a1e-8d2b-4c3a-9e7f-0a1b2c3d4e5f
cat > store.toml <<EOF
[[webhooks]]
uuid = "$TARGET"
company = "550e8400-e29b-41d4-a716-446655440000"
url = "https://localhost:$UP_PORT/webhooks?id=1"
events = ["*"]
status = "active"
secret = "whsec_$(openssl rand -hex 32)"
created_at = "2026-02-18T10:00:00Z"
updated_at = "2026-02-18T10:00:00Z"
EOF
python3 -c "import sys; head='{\"type\":\"invoice.created\",\"pad\":\"'; tail='\"}'; sys.stdout.write(head + 'x'*(1024-len(head)-len(tail)) + tail)" > body.json
cat > post.lua <<EOF
local f = assert(io.open("$WORK/body.json", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Webhook-Id"] = "$TARGET"
wrk.headers["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
EOF

wait_port() {
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "port $1 did not open" >&2; return 1
}
declare -A PID_OF ADMIN_OF
start() { # name binary port tracing-lines
    local name=$1 binary=$2 port=$3 admin=$(($3 + 100))
    cat > "$name.toml" <<EOF
[proxy]
listen = "127.0.0.1:$port"
[admin]
listen = "127.0.0.1:$admin"
[store]
path = "$WORK/store.toml"
[egress]
allow_private = true
ca_file = "$WORK/ca.pem"
[server]
worker_threads = 1
$4
EOF
    taskset -c "$PROXY_CORE" "$binary" serve --config "$WORK/$name.toml" > "$name.log" 2>&1 &
    PID_OF[$name]=$!
    ADMIN_OF[$name]=$admin
    PIDS+=("$!")
    wait_port "$port"
    curl -fsS -o /dev/null "http://127.0.0.1:$admin/readyz"
}
cpu_ticks() { sed 's/^.*) //' /proc/"$1"/stat | awk '{print $12 + $13}'; }
TICK=$(getconf CLK_TCK)
RESULTS="$WORK/results.tsv"
: > "$RESULTS"
measure() { # name port round
    local name=$1 port=$2 round=$3 pid=${PID_OF[$1]} before after out reqs rps p99 cpu_us
    taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"${WARMUP}s" -s post.lua "http://127.0.0.1:$port/" > /dev/null
    before=$(cpu_ticks "$pid")
    out=$(taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s post.lua "http://127.0.0.1:$port/")
    after=$(cpu_ticks "$pid")
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    case $reqs in '' | *[!0-9]* | 0) echo "$name: no requests completed: $out" >&2; exit 1 ;; esac
    ! echo "$out" | grep -q 'Non-2xx' || say "$name: $(echo "$out" | grep Non-2xx)"
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    cpu_us=$(awk -v d=$((after - before)) -v t="$TICK" -v r="$reqs" 'BEGIN { printf "%.1f", d / t * 1e6 / r }')
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$round" "$rps" "$p99" "$cpu_us" >> "$RESULTS"
    say "$name round $round/$ROUNDS: $rps req/s, p99 $p99, $cpu_us us CPU/req"
}

wait_port "$UP_PORT"
wait_port "$OTLP_PORT"
NAMES=()
if [ -n "${BASE:-}" ]; then start base "$BASE" "$BASE_PORT" ""; NAMES+=(base); fi
start off "$HOOKSIGN" "$OFF_PORT" ""
start on "$HOOKSIGN" "$ON_PORT" "[tracing]
otlp_endpoint = \"http://127.0.0.1:$OTLP_PORT\"
sample_ratio = 1.0
max_queue_size = 65536"
NAMES+=(off on)
declare -A PORT_OF=([base]=$BASE_PORT [off]=$OFF_PORT [on]=$ON_PORT)
for round in $(seq 1 "$ROUNDS"); do
    for name in "${NAMES[@]}"; do measure "$name" "${PORT_OF[$name]}" "$round"; done
done
dropped=$(curl -fsS "http://127.0.0.1:${ADMIN_OF[on]}/metrics" | awk '$1 == "hooksign_trace_spans_dropped_total" {print $2}')

python3 - "$RESULTS" "$CONNS" "$DURATION" "$dropped" <<'PY'
import statistics, sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().split("\n") if line]
by = {}
for name, rnd, rps, p99, cpu in rows:
    by.setdefault(name, []).append((int(rnd), float(rps), p99, float(cpu)))
print(f"\n1 KiB deliveries, {sys.argv[2]} connections, {sys.argv[3]} s per run, hooksign pinned to one core")
print("| instance | req/s (median) | CPU us/req (median) | per round |")
print("|---|---|---|---|")
for name, runs in by.items():
    print(f"| {name} | {statistics.median(r[1] for r in runs):.0f} | {statistics.median(r[3] for r in runs):.1f} | "
          + ", ".join(f"{r[3]:.1f}" for r in runs) + " |")
def ratio(a, b):
    if a in by and b in by:
        per = [x[3] / y[3] for x, y in zip(by[a], by[b])]
        med = statistics.median(r[3] for r in by[a]) / statistics.median(r[3] for r in by[b])
        print(f"CPU/req {a} / {b}: {med:.3f} (per round: " + ", ".join(f"{p:.3f}" for p in per) + ")")
ratio("on", "off")
ratio("off", "base")
print(f"spans dropped by the traced instance: {sys.argv[4]}")
PY
