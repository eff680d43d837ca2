#!/usr/bin/env bash
# Side-by-side load test: nginx (the anchor: HTTP in, HTTPS out, keep-alive pool) against
# hooksign (HTTP in, sign, HTTPS out), same upstream, same wrk script, same pinning.
#
#   bash benches/load.sh            # DURATION=10 WARMUP=3 CONNS=64 ROUNDS=3 by default
#
# Layout (2 cores): the proxy under test on core 0; wrk and the TLS upstream (nginx returning a
# fixed 200) on core 1. Figures: wrk's req/s and p50/p99; CPU per request from /proc/<pid>/stat
# (utime+stime delta over the measured run / requests); RSS from /proc/<pid>/status.
# Also: hooksign's idle RSS with 10,000 endpoints loaded, and CPU per request with 100,000
# endpoints against 10. Everything lives in a temp dir; only the processes started here are
# stopped, by PID. Not part of `cargo test`. Loopback only; every run is bounded by DURATION.
#
# Method: one run differs from the next by about +-10 %, so every comparison is ROUNDS
# alternating runs: nginx, hooksign, nginx, hooksign, ... per body size, and 10 endpoints,
# 100,000 endpoints, ... with both hooksign instances up at once (own ports, both pinned to
# PROXY_CORE). Every run gets its own WARMUP-second wrk warm-up right before it: each run opens
# fresh connections and follows the other proxy's run, so each is warmed alike (one warm-up per
# proxy and size would leave the later rounds warmer than the first). The table shows the median
# of the ROUNDS runs per metric and proxy; ratios are median / median; one line per comparison
# lists the per-round ratios, so the spread is visible. Every run's figures stay in results.tsv
# (KEEP=1 keeps the temp dir). The proxy not being measured should be idle; its CPU over the
# other's measured run is recorded and printed, with a warning above 1 % of the run. After each
# 100,000-endpoint run but the last, the script waits until that instance has used no CPU for
# 11 s (at most 25 s), so its delivery-record flush (10 s after start, then every 10 s or 100
# times the last flush's duration; ~0.2 s of CPU at 100,000 endpoints) does not land in the next
# 10-endpoint run.
#
# Total time at the defaults (DURATION=10 WARMUP=3 ROUNDS=3): 6 x ROUNDS runs of
# WARMUP + DURATION seconds (234 s), 11 to 25 s of settling per 100,000-endpoint round but the
# last, and ~10 s of setup (certificates, stores, starts) after a cached release build: about
# 5 minutes. In general 6 x ROUNDS x (WARMUP + DURATION) + up to 25 x (ROUNDS - 1) + ~10 s.
set -euo pipefail

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
UP_PORT=${UP_PORT:-18443}
NGINX_PORT=${NGINX_PORT:-18080}
HS_PORT=${HS_PORT:-18081}
HS_ADMIN=${HS_ADMIN:-18091}
HS2_PORT=${HS2_PORT:-18082} # the second hooksign instance (100,000 endpoints)
HS2_ADMIN=${HS2_ADMIN:-18092}
case $ROUNDS in '' | *[!0-9]* | 0) echo "ROUNDS must be a positive integer" >&2; exit 1 ;; esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/hooksign-load.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

say() { printf '== %s\n' "$*" >&2; }

# --- tools -------------------------------------------------------------------------------------
need=()
command -v nginx >/dev/null || need+=(nginx-full)
command -v wrk >/dev/null || need+=(wrk)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v python3 >/dev/null || { echo "python3 is needed to generate stores" >&2; exit 1; }

say "building hooksign (release)"
(cd "$ROOT" && cargo build --release --quiet --bin hooksign)
HOOKSIGN="$ROOT/target/release/hooksign"

# --- certificates: a CA and a leaf for localhost / 127.0.0.1 ---------------------------------
cd "$WORK"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=hooksign load CA" -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=localhost" -keyout leaf.key -out leaf.csr 2>/dev/null
printf 'basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n' > leaf.ext
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile leaf.ext -out leaf.pem 2>/dev/null

# --- the TLS upstream: nginx answering a fixed 200, echoing the signature it saw -----------------
mkdir -p up proxy
cat > up/nginx.conf <<EOF
worker_processes 1;
daemon off;
pid $WORK/up/nginx.pid;
error_log $WORK/up/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/up/body;
    client_max_body_size 2m;
    client_body_buffer_size 128k;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server {
        listen 127.0.0.1:$UP_PORT ssl;
        ssl_certificate $WORK/leaf.pem;
        ssl_certificate_key $WORK/leaf.key;
        ssl_protocols TLSv1.3;
        location / {
            add_header X-Seen-Signature \$http_x_storno_signature always;
            return 200 "ok\n";
        }
    }
}
EOF
taskset -c "$LOAD_CORE" nginx -c "$WORK/up/nginx.conf" -p "$WORK/up" &
PIDS+=($!)

# --- the anchor: nginx as HTTP-in, HTTPS-out reverse proxy with a keep-alive pool ------------
cat > proxy/nginx.conf <<EOF
worker_processes 1;
daemon off;
pid $WORK/proxy/nginx.pid;
error_log $WORK/proxy/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/proxy/body;
    proxy_temp_path $WORK/proxy/proxy;
    client_max_body_size 2m;
    client_body_buffer_size 128k;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    upstream customer {
        server 127.0.0.1:$UP_PORT;
        keepalive 128;
        keepalive_requests 10000000;
        keepalive_timeout 120s;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass https://customer/webhooks;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host localhost;
            proxy_ssl_server_name on;
            proxy_ssl_name localhost;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate $WORK/ca.pem;
            proxy_ssl_session_reuse on;
            # The same protocol as hooksign speaks (nginx 1.22's default stops at TLS 1.2).
            proxy_ssl_protocols TLSv1.3;
        }
    }
}
EOF

# --- stores, bodies, wrk scripts ---------------------------------------------------------------
TARGET=5f0c9a1e-8d2b-4c3a-9e7f-0a1b2c3d4e5f
SECRET=whsec_$(openssl rand -hex 32)
make_store() { # count file
    python3 - "$1" "$2" "$TARGET" "$SECRET" "https://localhost:$UP_PORT/webhooks" <<'PY'
import secrets, sys, uuid
count, path, target, secret, url = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
company = "550e8400-e29b-41d4-a716-446655440000"
rows = []
for i in range(count):
    u, s = (target, secret) if i == count // 2 else (str(uuid.uuid4()), "whsec_" + secrets.token_hex(32))
    rows.append(f'[[webhooks]]\nuuid = "{u}"\ncompany = "{company}"\nurl = "{url}"\n'
                f'events = ["*"]\nstatus = "active"\nsecret = "{s}"\n'
                f'created_at = "2026-02-18T10:00:00Z"\nupdated_at = "2026-02-18T10:00:00Z"\n')
open(path, "w").write("\n".join(rows))
PY
}
for n in 10 10000 100000; do make_store "$n" "store-$n.toml"; done
for size in 1024 65536; do
    python3 -c "import sys; n=int(sys.argv[1]); head='{\"type\":\"invoice.created\",\"pad\":\"'; tail='\"}'; sys.stdout.write(head + 'x'*(n-len(head)-len(tail)) + tail)" "$size" > "body-$size.json"
    cat > "post-$size.lua" <<EOF
local f = assert(io.open("$WORK/body-$size.json", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Webhook-Id"] = "$TARGET"
EOF
done

hooksign_config() { # store workers port admin-port
    cat > "hooksign-${1%.toml}.conf.toml" <<EOF
[proxy]
listen = "127.0.0.1:$3"
[admin]
listen = "127.0.0.1:$4"
[store]
path = "$WORK/$1"
[egress]
allow_private = true
ca_file = "$WORK/ca.pem"
[server]
worker_threads = $2
EOF
}

wait_port() { # port
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "port $1 did not open" >&2; return 1
}

HS_PID=
start_hooksign() { # store [port admin-port]; sets HS_PID
    local port=${2:-$HS_PORT} admin=${3:-$HS_ADMIN}
    hooksign_config "$1" 1 "$port" "$admin"
    taskset -c "$PROXY_CORE" "$HOOKSIGN" serve --config "$WORK/hooksign-${1%.toml}.conf.toml" > "hooksign-${1%.toml}.log" 2>&1 &
    HS_PID=$!
    PIDS+=("$HS_PID")
    wait_port "$port"
    curl -fsS -o /dev/null "http://127.0.0.1:$admin/readyz"
}
stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

NGINX_PID=
start_nginx() {
    taskset -c "$PROXY_CORE" nginx -c "$WORK/proxy/nginx.conf" -p "$WORK/proxy" &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    wait_port "$NGINX_PORT"
}

# The PIDs whose CPU counts for a proxy: the process and its children (nginx's workers).
family() { echo "$1"; cat /proc/"$1"/task/*/children 2>/dev/null | tr ' ' '\n' | grep . || true; }
cpu_ticks() { # pids...
    local total=0 pid fields
    for pid in "$@"; do
        fields=$(sed 's/^.*) //' /proc/"$pid"/stat) # fields from 3 on: utime=14, stime=15
        total=$((total + $(echo "$fields" | awk '{print $12 + $13}')))
    done
    echo "$total"
}
rss_kib() { # key pids...
    local key=$1 total=0 pid; shift
    for pid in "$@"; do total=$((total + $(awk -v k="$key:" '$1 == k {print $2}' /proc/"$pid"/status))); done
    echo "$total"
}
to_ms() { # wrk latency text (us/ms/s) -> ms
    awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.2f", n }'
}

# settle PID QUIET LIMIT: waits until PID (and its children) used no CPU for QUIET seconds in a
# row, at most LIMIT seconds.
settle() {
    local pids last now quiet=0 waited=0
    mapfile -t pids < <(family "$1")
    last=$(cpu_ticks "${pids[@]}")
    while [ "$quiet" -lt "$2" ] && [ "$waited" -lt "$3" ]; do
        sleep 1
        waited=$((waited + 1))
        now=$(cpu_ticks "${pids[@]}")
        if [ "$now" = "$last" ]; then quiet=$((quiet + 1)); else quiet=0; last=$now; fi
    done
    [ "$quiet" -ge "$2" ] || say "pid $1 still used CPU after ${3} s of waiting"
}

TICK=$(getconf CLK_TCK)
RESULTS="$WORK/results.tsv"
: > "$RESULTS"
# measure NAME PORT SIZE ROUND PID IDLE_PID: warm-up, then one measured wrk run; appends a row
# to results: name, size, round, req/s, p50 ms, p99 ms, CPU us/req, RSS KiB, HWM KiB, and the
# CPU ms that IDLE_PID (the other proxy, idle meanwhile) used over the measured run.
measure() {
    local name=$1 port=$2 size=$3 round=$4 pid=$5 idle=$6 pids idle_pids before after
    local idle_before idle_after out reqs rps p50 p99 errs
    taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"${WARMUP}s" -s "post-$size.lua" "http://127.0.0.1:$port/" > /dev/null
    mapfile -t pids < <(family "$pid")
    mapfile -t idle_pids < <(family "$idle")
    idle_before=$(cpu_ticks "${idle_pids[@]}")
    before=$(cpu_ticks "${pids[@]}")
    out=$(taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "post-$size.lua" "http://127.0.0.1:$port/")
    after=$(cpu_ticks "${pids[@]}")
    idle_after=$(cpu_ticks "${idle_pids[@]}")
    echo "$out" > "wrk-$name-$size-r$round.txt"
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    case $reqs in
        '' | *[!0-9]* | 0) printf '%s %s round %s: no requests completed\n%s\n' "$name" "$size" "$round" "$out" >&2; exit 1 ;;
    esac
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(to_ms "$(echo "$out" | awk '$1 == "50%" {print $2}')")
    p99=$(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')")
    errs=$(echo "$out" | awk '/Non-2xx/ {print $NF} /Socket errors/ {print}' | tr '\n' ' ')
    [ -z "$errs" ] || say "$name $size: $errs"
    local cpu_us rss hwm idle_ms
    cpu_us=$(awk -v d=$((after - before)) -v t="$TICK" -v r="$reqs" 'BEGIN { printf "%.1f", d / t * 1e6 / r }')
    idle_ms=$(awk -v d=$((idle_after - idle_before)) -v t="$TICK" 'BEGIN { printf "%.0f", d / t * 1e3 }')
    rss=$(rss_kib VmRSS "${pids[@]}")
    hwm=$(rss_kib VmHWM "${pids[@]}")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$name" "$size" "$round" "$rps" "$p50" "$p99" "$cpu_us" "$rss" "$hwm" "$idle_ms" >> "$RESULTS"
    say "$name $size B, round $round/$ROUNDS: $rps req/s, p50 $p50 ms, p99 $p99 ms, $cpu_us us CPU/req," \
        "RSS $((rss / 1024)) MiB; idle partner $idle_ms ms CPU"
}

wait_port "$UP_PORT"

# --- signatures verify: a delivery through hooksign, the signature the upstream saw ----------
say "checking signatures through hooksign"
start_hooksign store-10.toml
for size in 1024 65536; do
    sig=$(curl -fsS -D - -o /dev/null -H "X-Webhook-Id: $TARGET" -H 'Content-Type: application/json' \
        --data-binary "@body-$size.json" "http://127.0.0.1:$HS_PORT/" | awk -F': ' 'tolower($1) == "x-seen-signature" {print $2}' | tr -d '\r')
    "$HOOKSIGN" verify --secret "$SECRET" --signature "$sig" "body-$size.json" \
        || { echo "signature for the $size-byte body does not verify" >&2; exit 1; }
    say "$size B body: X-Storno-Signature $sig verifies"
done

# --- side by side: nginx, hooksign, nginx, hooksign, ... (ROUNDS each), per body size --------
start_nginx
for size in 1024 65536; do
    for round in $(seq 1 "$ROUNDS"); do
        measure nginx "$NGINX_PORT" "$size" "$round" "$NGINX_PID" "$HS_PID"
        measure hooksign "$HS_PORT" "$size" "$round" "$HS_PID" "$NGINX_PID"
    done
done
HS_HWM=$(rss_kib VmHWM "$HS_PID")
stop_pid "$NGINX_PID"
stop_pid "$HS_PID"

# --- idle RSS with 10,000 endpoints --------------------------------------------------------
start_hooksign store-10000.toml
sleep 1
IDLE_10K=$(rss_kib VmRSS "$HS_PID")
stop_pid "$HS_PID"

# --- CPU per request: 100,000 endpoints against 10 (1 KiB), both up, alternating ----------
start_hooksign store-10.toml "$HS_PORT" "$HS_ADMIN"
HS10_PID=$HS_PID
start_hooksign store-100000.toml "$HS2_PORT" "$HS2_ADMIN"
HS100K_PID=$HS_PID
settle "$HS100K_PID" 2 30 # readyz says the store is loaded; make sure the load's CPU is over
for round in $(seq 1 "$ROUNDS"); do
    measure hooksign-10 "$HS_PORT" 1024 "$round" "$HS10_PID" "$HS100K_PID"
    measure hooksign-100k "$HS2_PORT" 1024 "$round" "$HS100K_PID" "$HS10_PID"
    # Its delivery-record flush (within 10 s) must not fall into the next 10-endpoint run.
    # (25 s: the next tick within 10 s, the flush, then 11 quiet seconds.)
    [ "$round" -eq "$ROUNDS" ] || settle "$HS100K_PID" 11 25
done
stop_pid "$HS10_PID"
stop_pid "$HS100K_PID"

# --- the table: medians of the ROUNDS runs; ratios are median / median ----------------------
python3 - "$RESULTS" "$IDLE_10K" "$HS_HWM" "$DURATION" "$CONNS" "$ROUNDS" <<'PY'
import statistics, sys
# Per (proxy, size): one list per run of req/s, p50, p99, CPU us/req, RSS KiB, HWM KiB, idle ms.
runs = {}
for line in open(sys.argv[1]):
    if line.strip():
        r = line.rstrip("\n").split("\t")
        runs.setdefault((r[0], r[1]), []).append([float(x) for x in r[3:]])
idle, hwm, duration, conns, rounds = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6])
res = {key: [statistics.median(col) for col in zip(*rows)] for key, rows in runs.items()}
def per_round(a, b, i):  # run-by-run ratios a/b of metric i, in round order
    return " ".join(f"{x[i]/y[i]:.2f}" for x, y in zip(runs[a], runs[b]))
print(f"\n{conns} connections, {duration} s per run, proxy pinned to one core, wrk + TLS upstream on the other; "
      f"medians of {rounds} alternating runs per proxy\n")
print("| body | proxy | req/s | p50 ms | p99 ms | CPU µs/req | RSS MiB | req/s ratio | p99 ratio | CPU ratio |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for size, label in (("1024", "1 KiB"), ("65536", "64 KiB")):
    n = res[("nginx", size)]
    for name in ("nginx", "hooksign"):
        v = res[(name, size)]
        ratios = ("", "", "") if name == "nginx" else (f"{v[0]/n[0]:.2f}×", f"{v[2]/n[2]:.2f}×", f"{v[3]/n[3]:.2f}×")
        print(f"| {label} | {name} | {v[0]:,.0f} | {v[1]:.2f} | {v[2]:.2f} | {v[3]:.1f} | {v[4]/1024:.1f} | " + " | ".join(ratios) + " |")
print()
for size, label in (("1024", "1 KiB"), ("65536", "64 KiB")):
    h, n = ("hooksign", size), ("nginx", size)
    print(f"{label} hooksign/nginx per round: req/s {per_round(h, n, 0)}; p99 {per_round(h, n, 2)}; CPU {per_round(h, n, 3)}")
ten, big = ("hooksign-10", "1024"), ("hooksign-100k", "1024")
a, b = res[ten], res[big]
print(f"\nhooksign peak RSS under load (VmHWM): {hwm/1024:.1f} MiB")
print(f"hooksign idle RSS with 10,000 endpoints: {idle/1024:.1f} MiB")
print(f"hooksign 1 KiB CPU/req: 10 endpoints {a[3]:.1f} µs, 100,000 endpoints {b[3]:.1f} µs ({b[3]/a[3]:.2f}×); "
      f"req/s {a[0]:,.0f} vs {b[0]:,.0f}")
print(f"100,000/10 endpoints per round: CPU {per_round(big, ten, 3)}; req/s {per_round(big, ten, 0)}")
side = max(r[6] for key, rows in runs.items() if key[0] in ("nginx", "hooksign") for r in rows)
ends = max(r[6] for key, rows in runs.items() if key[0].startswith("hooksign-") for r in rows)
run_ms = float(duration) * 1000
print(f"idle partner's CPU over a measured run, at most: {side:.0f} ms side by side, {ends:.0f} ms 10 vs 100,000 "
      f"(a run is {run_ms:.0f} ms)")
if max(side, ends) > 0.01 * run_ms:
    print("WARNING: an instance that should have been idle used over 1 % of a core during another's measured run "
          "(it shares the pinned core): those runs interfere; see the per-run lines on stderr")
PY
