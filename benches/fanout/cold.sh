#!/usr/bin/env bash
# cold.sh: every delivery on a new TLS connection. Customers' servers close idle connections,
# and most webhook destinations get too few deliveries to keep one warm. The TLS upstream (nginx,
# fixed 200) runs with `keepalive_timeout 0`, so it answers every request with
# `Connection: close` and each delivery costs a TCP connect + TLS handshake. The upstream's
# access log records `$ssl_session_reused` per request, so each run counts full and resumed
# handshakes; `$connection_requests` must be 1 (one request per connection).
#
# NS="1 1000" (default): N=1 is one origin (h1.hooks.test), where any client session cache
# resumes; N=1000 spreads deliveries uniformly over 1000 distinct origins hI.hooks.test (as in
# fanout.sh), so a session cache holding fewer than N sessions stops helping (rustls' default
# client cache keeps 256 server names).
# Proxies (TARGETS): nginx (proxy_ssl_session_reuse on, the default: one saved session per
# upstream server; proxy_ssl_protocols TLSv1.2 TLSv1.3, so it speaks TLS 1.3 like the Rust
# proxies), nginx12 (the same with nginx 1.22's default proxy_ssl_protocols, which stop at
# TLS 1.2: what an unconfigured nginx 1.22 does), hooksign, pingora (the anchor, if built).
# 1 KiB bodies, 64 wrk connections.
#
#   bash cold.sh                                   # NS="1 1000", 3 rounds x 10 s
#   DURATION=3 ROUNDS=1 QUIET_WAIT_MAX=0 bash cold.sh      # smoke
# Knobs: as fanout.sh (NS DISTS BODY CONNS DURATION WARMUP ROUNDS TARGETS SPREAD SEED ...).
# Per run, in addition to fanout.sh's figures: full / resumed handshakes seen by the upstream
# during the measured run, and one logged delivery's signature verified with `hooksign verify`.
# Note: hooksign resolves the destination name for every new connection (its egress guard checks
# every address it connects to), so here it calls getaddrinfo() once per delivery; with hostnames in
# /etc/hosts that call scans the whole file (its cost is printed in meta.txt: subtract it
# to compare with a DNS-cached deployment). nginx and pingora-sign resolve once, at start.
set -uo pipefail
source "$(dirname "$0")/perfx-lib.sh"

NS=${NS:-"1 1000"}
DISTS=${DISTS:-uniform}
BODY=${BODY:-1024}
KEEPALIVE=${KEEPALIVE:-8}
NGINX_ADDR=${NGINX_ADDR:-name}
TARGETS=${TARGETS:-"nginx nginx12 $(default_targets | sed 's/^nginx //')"}
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${OUT:-$PERFX_DIR/results/cold-$STAMP}
RUNDIR=$PERFX_DIR/run/cold-$$
mkdir -p "$OUT" "$RUNDIR"
RAW=$OUT/raw.jsonl; : > "$RAW"

need_tools
[[ " $TARGETS " == *" pingora "* && ! -x $PINGORA_BIN ]] && { echo "pingora target but no $PINGORA_BIN" >&2; exit 1; }
check_ports "$UP_PORT" "$UP_STATUS_PORT" "$NGINX_PORT" "$NGINX12_PORT" "$HS_PORT" "$HS_ADMIN" "$PG_PORT" "$HSB_PORT" "$HSB_ADMIN"
perfx_certs
maxn=0; for n in $NS; do (( n > maxn )) && maxn=$n; done
hosts_add "$maxn"
head -c "$BODY" /dev/zero | tr '\0' x > "$RUNDIR/body.bin"
start_upstream cold "$RUNDIR/upstream"
ALOG=$RUNDIR/upstream/access.log
logsize() { stat -c %s "$ALOG" 2>/dev/null || echo 0; }

{
  echo "# cold run $STAMP on $(hostname): $(nproc) cpus,$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), sha_ni=$(grep -qw sha_ni /proc/cpuinfo && echo yes || echo no)"
  echo "# nginx $(nginx -v 2>&1 | cut -d/ -f2), wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}'), $("$HOOKSIGN_BIN" --version 2>&1), pingora-sign $([[ -x $PINGORA_BIN ]] && echo built || echo absent)"
  echo "# layout: proxy@cpu$PROXY_CPU, wrk@cpu$LOAD_CPU, upstream@cpu$UPSTREAM_CPU (keepalive_timeout 0: Connection: close on every response); wrk -t1 -c$CONNS; ${DURATION}s runs after ${WARMUP}s warm-ups; $ROUNDS round(s); body $BODY B"
  echo "# N=[$NS] dists=[$DISTS]; hostnames over $SPREAD loopback addresses; upstream ssl_session_cache shared 64m + tickets (nginx defaults otherwise)"
  echo "# getaddrinfo() with this /etc/hosts ($(wc -l < /etc/hosts) lines): $($PERFX_PY gai "h1.$DOMAIN" "h$maxn.$DOMAIN") µs per call"
  echo "# tls: $(echo | timeout 5 openssl s_client -connect 127.0.1.1:$UP_PORT -servername h1.$DOMAIN -CAfile "$PERFX_DIR/certs/ca.pem" -verify_hostname h1.$DOMAIN 2>/dev/null | grep -E '^(New|Verify return code)' | tr '\n' ' ')"
} > "$OUT/meta.txt"
cat "$OUT/meta.txt" >&2

stop_target() {
  local pid p keep=()
  pid=$(target_pid "$1")
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  for p in "${STARTED_PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
  STARTED_PIDS=("${keep[@]}")
}

for n in $NS; do
  G=$RUNDIR/n$n; mkdir -p "$G"
  $PERFX_PY gen "$G" "$n" --ca "$PERFX_DIR/certs/ca.pem" --up-port "$UP_PORT" --seed "$SEED" \
    --keepalive "$KEEPALIVE" --pool "${PINGORA_POOL:-128}" --nofile "$(ulimit -Hn)" --nginx-addr "$NGINX_ADDR" \
    --nginx-port "$NGINX_PORT" --nginx12-port "$NGINX12_PORT" --hs-port "$HS_PORT" --hs-admin "$HS_ADMIN" --pg-port "$PG_PORT" || exit 1
  for t in $TARGETS; do
    start_target "$t" "$G"
  done
  for d in $DISTS; do
    grp="cold N=$n $d, $BODY B, $CONNS conns, Connection: close"
    for t in $TARGETS; do
      chk=$(check_deliveries "$t" "$G" "$RUNDIR/body.bin" 3)
      log "check $t N=$n: $chk"
      echo "{\"check\":\"$chk\",\"group\":\"$grp\",\"target\":\"$t\"}" >> "$RAW"
    done
  done
  for t in $TARGETS; do for d in $DISTS; do measure_run "$t" "$BODY" "$G/uuids.txt" "$d" "$WARMUP" > /dev/null; done; done
  for r in $(seq "$ROUNDS"); do
    for d in $DISTS; do
      grp="cold N=$n $d, $BODY B, $CONNS conns, Connection: close"
      for t in $TARGETS; do
        wait_quiet
        measure_run "$t" "$BODY" "$G/uuids.txt" "$d" "$WARMUP" > /dev/null
        sleep 1.3; o0=$(logsize)          # the access log is flushed every second
        line=$(measure_run "$t" "$BODY" "$G/uuids.txt" "$d" "$DURATION" "{\"group\":\"$grp\",\"round\":$r,\"n\":$n,\"dist\":\"$d\"}")
        sleep 1.3; o1=$(logsize)
        hs=$($PERFX_PY logslice "$ALOG" "$o0" "$o1")
        tw=$(ss -Htan state time-wait "( dport = :$UP_PORT or sport = :$UP_PORT )" | wc -l)
        sigchk="-"
        if [[ $t != nginx* ]]; then   # one recorded delivery of this run: its signature, that endpoint's secret
          read -r lhost lsecret lsig <<<"$($PERFX_PY logsig "$ALOG" "$o0" "$o1" "$G/endpoints.tsv")"
          if [[ $lhost != none ]] && HOOKSIGN_SECRET=$lsecret "$HOOKSIGN_BIN" verify --signature "$lsig" "$RUNDIR/body.bin" > /dev/null 2>&1; then
            sigchk="verified($lhost)"; else sigchk="FAIL($lhost)"; fi
        fi
        line=$($PY -c 'import json,sys; r=json.loads(sys.argv[1]); r.update(json.loads(sys.argv[2])); r["time_wait"]=int(sys.argv[3]); r["logged_sig"]=sys.argv[4]; print(json.dumps(r))' "$line" "$hs" "$tw" "$sigchk")
        echo "$line" >> "$RAW"
        $PERFX_PY line "$line"
        log "    upstream log: $hs; time-wait $tw; logged delivery signature: $sigchk"
      done
    done
  done
  for t in $TARGETS; do stop_target "$t"; done
done

perfx_cleanup
$PERFX_PY summarize "$RAW" --meta "$OUT/meta.txt" | tee "$OUT/summary.md"
log "results in $OUT"
