#!/usr/bin/env bash
# all.sh: the one command for issue 18's workloads, nginx, the pingora anchor and hooksign side by
# side (and `hsbase`, another hooksign build, when HOOKSIGN_BASE_BIN is executable):
#   1. single origin, keep-alive, 1 KiB (the regression check against the previous release);
#   2. cold: every delivery on a new connection (the upstream closes each), N=1000 origins;
#   3. warm fan-out: FANOUT_NS (default 1000) origins, uniform and Zipf (FANOUT_TARGETS, default
#      "nginx hooksign pingora"; add hsbase for a before/after at fan-out).
# Each part is fanout.sh or cold.sh (their knobs pass through: DURATION WARMUP ROUNDS CONNS
# QUIET_WAIT_MAX ...); every table row names the regime it measured (new connections with full
# or resumed handshakes, a warm pool, or a pool that was reconnecting). Loopback only; the
# /etc/hosts block is removed at exit (also on Ctrl-C), every process is stopped by its PID.
#
#   HOOKSIGN_BIN=target/release/hooksign HOOKSIGN_BASE_BIN=/path/to/previous/hooksign \
#     PINGORA_BIN=... bash benches/fanout/all.sh
# Not part of `cargo test` or CI.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PERFX_DIR=${PERFX_DIR:-/tmp/perfx}
HOOKSIGN_BASE_BIN=${HOOKSIGN_BASE_BIN:-$PERFX_DIR/hooksign-base}
OUT=${OUT:-$PERFX_DIR/results/all-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
base=""; [[ -x $HOOKSIGN_BASE_BIN ]] && base=" hsbase"
pg=""; [[ -x ${PINGORA_BIN:-$PERFX_DIR/target/release/pingora-sign} ]] && pg=" pingora"
rc=0
N=1 NS=1 KEEPALIVE=256 DISTS=uniform BODY=1024 WORKLOAD=single TARGETS="nginx hooksign$base$pg" \
  OUT=$OUT/single-1024 bash "$HERE/fanout.sh" || rc=1
NS=${COLD_NS:-1000} TARGETS="nginx hooksign$pg" OUT=$OUT/cold bash "$HERE/cold.sh" || rc=1
NS=${FANOUT_NS:-1000} DISTS=${FANOUT_DISTS:-"uniform zipf"} BODY=1024 WORKLOAD=fanout TARGETS=${FANOUT_TARGETS:-"nginx hooksign$pg"} \
  OUT=$OUT/fanout bash "$HERE/fanout.sh" || rc=1
{
  echo "# all: nginx / hooksign / pingora-sign, $(date -u)"
  for d in single-1024 cold fanout; do
    echo; echo "## $d"; echo
    [[ -s $OUT/$d/summary.md ]] && cat "$OUT/$d/summary.md" || echo "(no summary: see $OUT/$d)"
  done
} > "$OUT/summary.md"
echo "results in $OUT/summary.md" >&2
exit $rc
