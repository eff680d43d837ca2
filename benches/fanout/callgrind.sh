#!/usr/bin/env bash
# callgrind.sh: instructions and (simulated) cache misses per request in hooksign's user space,
# one origin against many: counts that do not depend on how busy the machine is, where
# profile.sh's CPU times do. hooksign runs under `valgrind --tool=callgrind --cache-sim=yes`
# with instrumentation off while its pool fills (uniform, every origin touched), then on for one
# measured wrk run of DURATION seconds, then off; the counts of that window are divided by wrk's
# completed requests. The kernel is not counted (valgrind sees user space only).
#
#   HOOKSIGN_BIN=/path/to/release/hooksign bash benches/fanout/callgrind.sh
#   PROFILES="1:uniform 1000:uniform" DURATION=20 bash benches/fanout/callgrind.sh
# Knobs: PROFILES ("N:dist", default "1:uniform 10000:uniform 10000:zipf"), DURATION (default
# 20), CONNS (default 16), BODY, ports and cores as fanout.sh. Results: $OUT/callgrind.md and the
# per-workload `callgrind_annotate` outputs. Loopback only, bounded in time. Not part of
# `cargo test` or CI.
set -uo pipefail
DURATION=${DURATION:-20}
CONNS=${CONNS:-16}
source "$(dirname "$0")/perfx-lib.sh"

PROFILES=${PROFILES:-"1:uniform 10000:uniform 10000:zipf"}
BODY=${BODY:-1024}
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${OUT:-$PERFX_DIR/results/callgrind-$STAMP}
RUNDIR=$PERFX_DIR/run/callgrind-$$
mkdir -p "$OUT" "$RUNDIR"
RAW=$OUT/raw.jsonl; : > "$RAW"
command -v valgrind >/dev/null || { echo "missing valgrind (apt-get install valgrind)" >&2; exit 1; }
need_tools
check_ports "$UP_PORT" "$UP_STATUS_PORT" "$HS_PORT" "$HS_ADMIN"
perfx_certs
maxn=0
for p in $PROFILES; do n=${p%%:*}; (( n > maxn )) && maxn=$n; done
UP_WORKERS=${UP_WORKERS:-$(( 1 + maxn / 12000 ))}
hosts_add "$maxn"
head -c "$BODY" /dev/zero | tr '\0' x > "$RUNDIR/body.bin"
start_upstream keepalive "$RUNDIR/upstream"
echo "# callgrind run $STAMP: $("$HOOKSIGN_BIN" --version 2>&1) ($HOOKSIGN_BIN); wrk -t1 -c$CONNS, ${DURATION}s measured window; body $BODY B; $(valgrind --version)" > "$OUT/meta.txt"

stop_hs() {
  local q keep=()
  kill -TERM "$PID_hooksign" 2>/dev/null
  for _ in $(seq 300); do kill -0 "$PID_hooksign" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$PID_hooksign" 2>/dev/null; wait "$PID_hooksign" 2>/dev/null
  for q in "${STARTED_PIDS[@]}"; do [[ $q == "$PID_hooksign" ]] || keep+=("$q"); done
  STARTED_PIDS=("${keep[@]}")
}

for p in $PROFILES; do
  n=${p%%:*}; d=${p#*:}; tag="n$n-$d"
  G=$RUNDIR/$tag; mkdir -p "$G"
  $PERFX_PY gen "$G" "$n" --ca "$PERFX_DIR/certs/ca.pem" --up-port "$UP_PORT" --seed "$SEED" \
    --pool "$(( 8 * n > 128 ? 8 * n : 128 ))" --nofile "$(ulimit -Hn)" --hs-port "$HS_PORT" --hs-admin "$HS_ADMIN" \
    --nginx-port "$NGINX_PORT" --nginx12-port "$NGINX12_PORT" --pg-port "$PG_PORT" || exit 1
  # TLS handshakes and connects take longer under valgrind
  sed -i 's/^\[proxy\]$/[proxy]\ntls_handshake_timeout = "30s"/' "$G/hooksign.toml"
  "$HOOKSIGN_BIN" check --config "$G/hooksign.toml" > "$G/check.log" 2>&1 || { cat "$G/check.log" >&2; exit 1; }
  RUST_LOG=warn taskset -c "$PROXY_CPU" valgrind --tool=callgrind --instr-atstart=no --cache-sim=yes \
    --callgrind-out-file="$OUT/$tag.callgrind.out" "$HOOKSIGN_BIN" serve --config "$G/hooksign.toml" > "$G/hooksign.log" 2>&1 &
  PID_hooksign=$!; STARTED_PIDS+=("$PID_hooksign")
  wait_port "$HS_PORT" 300 || { echo "hooksign did not start under valgrind" >&2; tail "$G/hooksign.log" >&2; exit 1; }
  log "hooksign under callgrind with $n endpoints (pid $PID_hooksign)"
  # fill the pool: every origin touched (uniform), about 3 requests per origin
  fw=$(( 10 > 3 * n / 200 ? 10 : 3 * n / 200 ))
  measure_run hooksign "$BODY" "$G/uuids.txt" uniform "$fw" > /dev/null
  measure_run hooksign "$BODY" "$G/uuids.txt" "$d" 5 > /dev/null
  callgrind_control -i on "$PID_hooksign" > /dev/null
  line=$(measure_run hooksign "$BODY" "$G/uuids.txt" "$d" "$DURATION" "{\"profile\":\"$tag\",\"n\":$n,\"dist\":\"$d\",\"under\":\"callgrind\"}")
  callgrind_control -i off "$PID_hooksign" > /dev/null
  echo "$line" >> "$RAW"; $PERFX_PY line "$line"
  stop_hs   # callgrind writes its counts at exit
  callgrind_annotate --inclusive=no "$OUT/$tag.callgrind.out" 2>/dev/null | head -80 > "$OUT/$tag.annotate.txt"
done
perfx_cleanup
$PY - "$OUT" <<'PY' | tee "$OUT/callgrind.md"
import glob, json, os, re, sys
out = sys.argv[1]
runs = {json.loads(l)["profile"]: json.loads(l) for l in open(os.path.join(out, "raw.jsonl"))}
print("| workload | requests in window | Ir/req | D1 misses/req (read+write) | LL misses/req (read+write) | I1 misses/req |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for tag, r in runs.items():
    f = os.path.join(out, f"{tag}.callgrind.out")
    ev, tot = None, None
    for line in open(f):
        if line.startswith("events:"):
            ev = line.split()[1:]
        elif line.startswith("totals:") or line.startswith("summary:"):
            tot = list(map(int, line.split()[1:]))
    c = dict(zip(ev, tot)); n = max(r["requests"], 1)
    print(f"| {tag} | {r['requests']:,} | {c.get('Ir', 0) / n:,.0f} | {(c.get('D1mr', 0) + c.get('D1mw', 0)) / n:,.0f} | "
          f"{(c.get('DLmr', 0) + c.get('DLmw', 0)) / n:,.1f} | {c.get('I1mr', 0) / n:,.0f} |")
PY
log "results in $OUT"
