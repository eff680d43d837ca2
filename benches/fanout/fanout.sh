#!/usr/bin/env bash
# fanout.sh: many destinations. N endpoints (NS="1000 10000" for both sizes), each on its own
# origin https://hI.hooks.test:8443/hook (I = 1..N), all served by one TLS upstream (nginx,
# fixed 200, keep-alive) holding ONE wildcard certificate *.hooks.test signed by a local CA.
# The hostnames go into /etc/hosts as one marked block (removed at exit), spread over the
# loopback addresses 127.0.1.1..127.0.1.$SPREAD so that several proxies' pools fit in the
# ephemeral port range.
#
# Proxies (TARGETS, default "nginx hooksign pingora" if the anchor is built):
#   nginx     one `upstream dI { server hI.hooks.test:8443; keepalive $KEEPALIVE; }` per destination,
#             `map $http_x_webhook_id $dest`, proxy_pass https://d$dest, proxy_ssl_server_name on,
#             proxy_ssl_name hI.hooks.test, proxy_ssl_verify on (local CA), proxy_ssl_session_reuse on.
#             proxy_ssl_protocols TLSv1.2 TLSv1.3 (nginx 1.22's default stops at TLS 1.2; target
#             nginx12 runs that default). It does not sign: it is the ratio base, as in benches/load.sh.
#   hooksign  $HOOKSIGN_BIN with a store of N endpoints, [egress] allow_cidrs 127.0.0.0/8 + ca_file,
#             [server] worker_threads = 1.
#   pingora   anchors/pingora-sign (built into $PERFX_DIR/target), JSON map of N endpoints, 1 thread,
#             pool_size $PINGORA_POOL (default max(128, 8 x N): nginx's total; pingora's own default is 128).
# wrk (fanout.lua) picks the endpoint of each request uniformly at random (DISTS has "uniform")
# and/or Zipf(ZIPF_S=1.1) ("zipf"). Every proxy is pinned to PROXY_CPU (0); wrk and the
# upstream share core 1. All proxies stay up (idle when not measured); runs alternate
# proxy by proxy, ROUNDS rounds, each measured run after its own WARMUP-second warm-up.
#
# Per run: req/s, p50/p99 (wrk), CPU µs/request (utime+stime delta of the proxy's processes /
# requests), upstream CPU µs/request, RSS, and the proxy's established TCP connections to :8443
# at the end of the run (ss -tnp, counted by owner pid). Before the runs, deliveries to 3 random
# endpoints through each proxy are checked: the upstream echoes the X-Storno-Signature, Host and
# SNI it saw; Host and SNI must be that endpoint's hostname and the signature must pass
# `hooksign verify` with that endpoint's secret; an unknown id must get 404.
#
#   bash fanout.sh                                   # N=1000, uniform, 1 KiB, 3 rounds x 10 s
#   NS="1000 10000" DISTS="uniform zipf" bash fanout.sh
#   DURATION=3 ROUNDS=1 QUIET_WAIT_MAX=0 bash fanout.sh           # smoke
# The first warm-up per proxy (uniform, FIRST_WARMUP = max(WARMUP, 3 s per 1000 endpoints)) opens
# the pools; hooksign and pingora close connections idle for 90 s, nginx for 120 s, so a long
# quiet wait between runs lets pools decay: the "new upstream conns per 1k req" column shows it.
# Knobs: NS (or N) DISTS ZIPF_S BODY CONNS DURATION WARMUP FIRST_WARMUP ROUNDS TARGETS KEEPALIVE
#   PINGORA_POOL SPREAD UP_WORKERS NGINX_ADDR=name|ip SEED QUIET_PCT QUIET_WAIT_MAX OUT,
#   ports UP_PORT NGINX_PORT HS_PORT HS_ADMIN PG_PORT, cores PROXY_CPU LOAD_CPU UPSTREAM_CPU.
# Results: $OUT/{raw.jsonl,summary.md,meta.txt} (default $PERFX_DIR/results/fanout-<stamp>).
set -uo pipefail
source "$(dirname "$0")/perfx-lib.sh"

NS=${NS:-${N:-1000}}
DISTS=${DISTS:-uniform}
BODY=${BODY:-1024}
KEEPALIVE=${KEEPALIVE:-8}
NGINX_ADDR=${NGINX_ADDR:-name}
TARGETS=${TARGETS:-$(default_targets)}
WORKLOAD=${WORKLOAD:-fanout}        # label only (side-by-side.sh uses N=1 for "single origin")
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${OUT:-$PERFX_DIR/results/$WORKLOAD-$STAMP}
RUNDIR=$PERFX_DIR/run/$WORKLOAD-$$
mkdir -p "$OUT" "$RUNDIR"
RAW=$OUT/raw.jsonl; : > "$RAW"

need_tools
[[ " $TARGETS " == *" pingora "* && ! -x $PINGORA_BIN ]] && { echo "pingora target but no $PINGORA_BIN" >&2; exit 1; }
check_ports "$UP_PORT" "$UP_STATUS_PORT" "$NGINX_PORT" "$NGINX12_PORT" "$HS_PORT" "$HS_ADMIN" "$PG_PORT" "$HSB_PORT" "$HSB_ADMIN"
perfx_certs
maxn=0; for n in $NS; do (( n > maxn )) && maxn=$n; done
ntargets=$(wc -w <<<"$TARGETS")
# every proxy's pool may hold ~N connections at once, and one upstream worker has < 20000 fds
UP_WORKERS=${UP_WORKERS:-$(( 1 + maxn * ntargets / 12000 ))}
hosts_add "$maxn"
head -c "$BODY" /dev/zero | tr '\0' x > "$RUNDIR/body.bin"
start_upstream keepalive "$RUNDIR/upstream"

{
  echo "# $WORKLOAD run $STAMP on $(hostname): $(nproc) cpus,$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), sha_ni=$(grep -qw sha_ni /proc/cpuinfo && echo yes || echo no)"
  echo "# nginx $(nginx -v 2>&1 | cut -d/ -f2), wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}'), $("$HOOKSIGN_BIN" --version 2>&1), pingora-sign $([[ -x $PINGORA_BIN ]] && echo built || echo absent)"
  echo "# layout: proxy@cpu$PROXY_CPU, wrk@cpu$LOAD_CPU, upstream@cpu$UPSTREAM_CPU ($UP_WORKERS worker(s)); wrk -t1 -c$CONNS; ${DURATION}s runs after ${WARMUP}s warm-ups; $ROUNDS round(s); body $BODY B"
  echo "# N=[$NS] dists=[$DISTS] zipf_s=${ZIPF_S:-1.1} nginx keepalive=$KEEPALIVE per upstream (server by $NGINX_ADDR), pingora pool=${PINGORA_POOL:-"max(128, 8xN)"}, hostnames over $SPREAD loopback addresses"
  echo "# getaddrinfo() with this /etc/hosts ($(wc -l < /etc/hosts) lines): $($PERFX_PY gai "h1.$DOMAIN" "h$maxn.$DOMAIN") µs per call"
  echo "# tls: $(echo | timeout 5 openssl s_client -connect 127.0.1.1:$UP_PORT -servername h1.$DOMAIN -CAfile "$PERFX_DIR/certs/ca.pem" -verify_hostname h1.$DOMAIN 2>/dev/null | grep -E '^(New|Verify return code)' | tr '\n' ' ')"
} > "$OUT/meta.txt"
cat "$OUT/meta.txt" >&2

stop_target() {  # target: stop it by PID and forget it
  local pid p keep=()
  pid=$(target_pid "$1")
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  for p in "${STARTED_PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
  STARTED_PIDS=("${keep[@]}")
}

declare -A IDLE_RSS   # each proxy's RSS right after start, before any upstream connection
for n in $NS; do
  G=$RUNDIR/n$n; mkdir -p "$G"
  pool=${PINGORA_POOL:-$(( 8 * n > 128 ? 8 * n : 128 ))}
  $PERFX_PY gen "$G" "$n" --ca "$PERFX_DIR/certs/ca.pem" --up-port "$UP_PORT" --seed "$SEED" \
    --keepalive "$KEEPALIVE" --pool "$pool" --nofile "$(ulimit -Hn)" --nginx-addr "$NGINX_ADDR" \
    --nginx-port "$NGINX_PORT" --nginx12-port "$NGINX12_PORT" --hs-port "$HS_PORT" --hs-admin "$HS_ADMIN" --pg-port "$PG_PORT" || exit 1
  cp "$G/nginx-proxy.conf" "$OUT/nginx-proxy-n$n.conf"
  for t in $TARGETS; do
    t0=$SECONDS
    start_target "$t" "$G"
    IDLE_RSS[$t]=$(rss_kib VmRSS $(family "$(target_pid "$t")"))
    log "$t up with $n endpoints in $((SECONDS - t0)) s (pid $(target_pid "$t"), idle RSS $(( IDLE_RSS[$t] / 1024 )) MiB)"
  done
  for d in $DISTS; do
    grp="$WORKLOAD N=$n $d, $BODY B, $CONNS conns"
    for t in $TARGETS; do
      chk=$(check_deliveries "$t" "$G" "$RUNDIR/body.bin" 3)
      log "check $t N=$n: $chk"
      echo "{\"check\":\"$chk\",\"group\":\"$grp\",\"target\":\"$t\"}" >> "$RAW"
    done
  done
  # first warm-up: fill the pools (one TLS handshake per destination at least), uniform so that
  # every destination is touched: about 3 x N requests (N/1000 x 3 s at >= 1000 req/s)
  fw=${FIRST_WARMUP:-$(( WARMUP > 3 * n / 1000 ? WARMUP : 3 * n / 1000 ))}
  for t in $TARGETS; do measure_run "$t" "$BODY" "$G/uuids.txt" uniform "$fw" > /dev/null; done
  for r in $(seq "$ROUNDS"); do
    for d in $DISTS; do
      grp="$WORKLOAD N=$n $d, $BODY B, $CONNS conns"
      for t in $TARGETS; do
        wait_quiet
        measure_run "$t" "$BODY" "$G/uuids.txt" "$d" "$WARMUP" > /dev/null
        line=$(measure_run "$t" "$BODY" "$G/uuids.txt" "$d" "$DURATION" "{\"group\":\"$grp\",\"round\":$r,\"n\":$n,\"dist\":\"$d\",\"idle_rss_kib\":${IDLE_RSS[$t]:-0}}")
        echo "$line" >> "$RAW"
        $PERFX_PY line "$line"
      done
    done
  done
  for t in $TARGETS; do stop_target "$t"; done
done

perfx_cleanup
$PERFX_PY summarize "$RAW" --meta "$OUT/meta.txt" | tee "$OUT/summary.md"
log "results in $OUT"
