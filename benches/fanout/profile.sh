#!/usr/bin/env bash
# profile.sh: where hooksign's CPU per request goes at one origin against many. hooksign runs
# alone (pinned to PROXY_CPU, as in fanout.sh) behind the same TLS upstream and wrk load as
# fanout.sh; for each workload in PROFILES ("N:dist", default "1:uniform 10000:uniform
# 10000:zipf") it fills the pool, warms up, then during one measured run of DURATION seconds
#   - `perf record -e cpu-clock -F $PERF_FREQ` samples the hooksign process (user and kernel),
#   - and a second run of the same length under `perf stat` counts software events and
#     syscalls (this machine's VM exposes no hardware counters: `perf stat -e instructions`
#     reports <not supported>).
# profile.py then turns the samples into µs per request per symbol (share of samples × the
# run's CPU µs per request) and prints the symbols whose cost differs most between the first
# workload and each other one, by symbol and by group (kernel TCP, epoll, rustls/AES-GCM,
# hyper, tokio, allocator, ...).
#
#   HOOKSIGN_BIN=/path/to/release/hooksign bash benches/fanout/profile.sh
#   PROFILES="1:uniform 1000:uniform" DURATION=8 bash benches/fanout/profile.sh
# Knobs as fanout.sh (DURATION WARMUP CONNS BODY SPREAD QUIET_WAIT_MAX ports cores) plus
# PROFILES, PERF_FREQ (default 2000). Results: $OUT/{profile.md,raw.jsonl,*.report.txt,*.stat.txt};
# the perf.data files are removed unless KEEP_PERF_DATA=1. Loopback only, bounded in time.
# Not part of `cargo test` or CI.
set -uo pipefail
source "$(dirname "$0")/perfx-lib.sh"

PROFILES=${PROFILES:-"1:uniform 10000:uniform 10000:zipf"}
BODY=${BODY:-1024}
PERF_FREQ=${PERF_FREQ:-2000}
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${OUT:-$PERFX_DIR/results/profile-$STAMP}
RUNDIR=$PERFX_DIR/run/profile-$$
mkdir -p "$OUT" "$RUNDIR"
RAW=$OUT/raw.jsonl; : > "$RAW"
command -v perf >/dev/null || { echo "missing perf (apt-get install linux-perf)" >&2; exit 1; }

need_tools
check_ports "$UP_PORT" "$UP_STATUS_PORT" "$HS_PORT" "$HS_ADMIN"
perfx_certs
maxn=0
for p in $PROFILES; do n=${p%%:*}; (( n > maxn )) && maxn=$n; done
UP_WORKERS=${UP_WORKERS:-$(( 1 + maxn / 12000 ))}
hosts_add "$maxn"
head -c "$BODY" /dev/zero | tr '\0' x > "$RUNDIR/body.bin"
start_upstream keepalive "$RUNDIR/upstream"
{
  echo "# profile run $STAMP: $(nproc) cpus,$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $("$HOOKSIGN_BIN" --version 2>&1) ($HOOKSIGN_BIN)"
  echo "# hooksign@cpu$PROXY_CPU, wrk@cpu$LOAD_CPU -t1 -c$CONNS, upstream@cpu$UPSTREAM_CPU; ${DURATION}s runs after ${WARMUP}s warm-ups; body $BODY B; perf cpu-clock at ${PERF_FREQ} Hz"
} > "$OUT/meta.txt"
cat "$OUT/meta.txt" >&2

perfx_stop_hooksign() {  # stop hooksign by its PID and forget it
  local q keep=()
  kill -TERM "$PID_hooksign" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$PID_hooksign" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$PID_hooksign" 2>/dev/null; wait "$PID_hooksign" 2>/dev/null
  for q in "${STARTED_PIDS[@]}"; do [[ $q == "$PID_hooksign" ]] || keep+=("$q"); done
  STARTED_PIDS=("${keep[@]}")
}

cur_n=""
for p in $PROFILES; do
  n=${p%%:*}; d=${p#*:}; tag="n$n-$d"
  G=$RUNDIR/n$n
  if [[ $cur_n != "$n" ]]; then
    [[ -n $cur_n ]] && perfx_stop_hooksign
    mkdir -p "$G"
    pool=$(( 8 * n > 128 ? 8 * n : 128 ))
    $PERFX_PY gen "$G" "$n" --ca "$PERFX_DIR/certs/ca.pem" --up-port "$UP_PORT" --seed "$SEED" \
      --pool "$pool" --nofile "$(ulimit -Hn)" --hs-port "$HS_PORT" --hs-admin "$HS_ADMIN" \
      --nginx-port "$NGINX_PORT" --nginx12-port "$NGINX12_PORT" --pg-port "$PG_PORT" || exit 1
    start_hooksign "$G"
    log "hooksign up with $n endpoints (pid $PID_hooksign)"
    chk=$(check_deliveries hooksign "$G" "$RUNDIR/body.bin" 3)
    log "check N=$n: $chk"
    [[ $chk == sig-ok* ]] || { echo "signature check failed: $chk" >&2; exit 1; }
    fw=$(( WARMUP > 3 * n / 1000 ? WARMUP : 3 * n / 1000 ))
    measure_run hooksign "$BODY" "$G/uuids.txt" uniform "$fw" > /dev/null
    cur_n=$n
  fi
  wait_quiet
  measure_run hooksign "$BODY" "$G/uuids.txt" "$d" "$WARMUP" > /dev/null
  perf record -q -e cpu-clock -F "$PERF_FREQ" -p "$PID_hooksign" -o "$OUT/$tag.perf.data" -- sleep "$DURATION" 2>/dev/null &
  perf_pid=$!
  line=$(measure_run hooksign "$BODY" "$G/uuids.txt" "$d" "$DURATION" "{\"profile\":\"$tag\",\"n\":$n,\"dist\":\"$d\",\"under\":\"perf record\"}")
  wait "$perf_pid"
  echo "$line" >> "$RAW"; $PERFX_PY line "$line"
  perf report -q -i "$OUT/$tag.perf.data" --no-children --sort dso,sym -F overhead,dso,sym --stdio 2>/dev/null \
    > "$OUT/$tag.report.txt"
  [[ ${KEEP_PERF_DATA:-0} == 1 ]] || rm -f "$OUT/$tag.perf.data"
  # the same run again under perf stat: software events and syscalls per request
  perf stat -x, -e task-clock,context-switches,cpu-migrations,page-faults,raw_syscalls:sys_enter,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_read,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto \
    -p "$PID_hooksign" -o "$OUT/$tag.stat.txt" -- sleep "$DURATION" 2>/dev/null &
  perf_pid=$!
  line=$(measure_run hooksign "$BODY" "$G/uuids.txt" "$d" "$DURATION" "{\"profile\":\"$tag\",\"n\":$n,\"dist\":\"$d\",\"under\":\"perf stat\"}")
  wait "$perf_pid"
  echo "$line" >> "$RAW"; $PERFX_PY line "$line"
done

perfx_cleanup
$PY "$HERE/profile.py" "$OUT" $(for p in $PROFILES; do echo "n${p%%:*}-${p#*:}"; done) | tee "$OUT/profile.md"
log "results in $OUT"
