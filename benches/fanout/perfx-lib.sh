# Shared by fanout.sh, cold.sh and side-by-side.sh (sourced, not run). Loopback only; every
# process started here is recorded in STARTED_PIDS and stopped by its PID at exit; the
# /etc/hosts block (hostnames h1..hN.hooks.test) is added in one marked block and removed at exit.
#
# Layout (as benches/load.sh): the proxy under test pinned to PROXY_CPU (0), wrk and the TLS
# upstream (nginx answering a fixed 200) on LOAD_CPU / UPSTREAM_CPU (1).

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PERFX_DIR=${PERFX_DIR:-/tmp/perfx}                           # certs, run state, results
HOOKSIGN_BIN=${HOOKSIGN_BIN:-$PERFX_DIR/hooksign}            # a copy of the project's target/release/hooksign
PINGORA_BIN=${PINGORA_BIN:-$PERFX_DIR/target/release/pingora-sign}
PY=${PY:-python3}
PERFX_PY="$PY $HERE/perfx.py"
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
UPSTREAM_CPU=${UPSTREAM_CPU:-1}
UP_PORT=${UP_PORT:-8443}
NGINX_PORT=${NGINX_PORT:-18180}
HS_PORT=${HS_PORT:-18181}
HS_ADMIN=${HS_ADMIN:-18191}
PG_PORT=${PG_PORT:-18182}
HSB_PORT=${HSB_PORT:-18184}             # target hsbase: another hooksign build (HOOKSIGN_BASE_BIN), e.g. the previous release
HSB_ADMIN=${HSB_ADMIN:-18194}
HOOKSIGN_BASE_BIN=${HOOKSIGN_BASE_BIN:-$PERFX_DIR/hooksign-base}
NGINX12_PORT=${NGINX12_PORT:-18183}     # target nginx12: nginx 1.22's default proxy_ssl_protocols (TLS 1.2)
UP_STATUS_PORT=${UP_STATUS_PORT:-18449}   # the upstream's stub_status (accepted connections)
SEED=${SEED:-42}
QUIET_PCT=${QUIET_PCT:-5}            # wait until other people's processes use < this % of a core ...
QUIET_WAIT_MAX=${QUIET_WAIT_MAX:-300} # ... at most this long per run (0: do not wait)
DOMAIN=hooks.test
CLK_TCK=$(getconf CLK_TCK)
STARTED_PIDS=()
HOSTS_TAG=""

log() { echo "[$(date +%T)] $*" >&2; }

perfx_cleanup() {
  local p
  for p in "${STARTED_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${STARTED_PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && { log "pid $p did not exit, KILL"; kill -KILL "$p" 2>/dev/null; }
    wait "$p" 2>/dev/null
  done
  STARTED_PIDS=()
  [[ -n $HOSTS_TAG ]] && $PERFX_PY hosts-remove "$HOSTS_TAG" && HOSTS_TAG=""
}
trap perfx_cleanup EXIT
trap 'exit 130' INT TERM

need_tools() {
  local t
  for t in nginx wrk taskset curl openssl ss "$PY"; do
    command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 1; }
  done
  [[ -x $HOOKSIGN_BIN ]] || { echo "no hooksign at $HOOKSIGN_BIN (cp target/release/hooksign $PERFX_DIR/ from the project root, or set HOOKSIGN_BIN)" >&2; exit 1; }
  # many upstream connections (fanout): raise the fd limit, the hard one too where allowed
  # (NOFILE, default 65536; a container without CAP_SYS_RESOURCE keeps its hard limit). hooksign
  # shares its limit out (src/limits.rs): with 20,000 its idle pool may hold 11,488 connections
  # (4,920 before issue 18's fix, when a 10,000-origin run measured reconnections); its log
  # says "cap lowered" when the pool is cut.
  if [[ $(id -u) == 0 ]] && (( $(ulimit -Hn) < ${NOFILE:-65536} )); then ulimit -Hn "${NOFILE:-65536}" 2>/dev/null; fi
  ulimit -n "$(ulimit -Hn)" 2>/dev/null
}

port_free() { ! ss -Htln "( sport = :$1 )" | grep -q .; }
check_ports() {  # every port we listen on must be free (other sessions share this machine)
  local p
  for p in "$@"; do port_free "$p" || { echo "port $p is in use; set UP_PORT/NGINX_PORT/HS_PORT/HS_ADMIN/PG_PORT" >&2; exit 1; }; done
}
wait_port() {  # port seconds
  local i
  for i in $(seq $((${2:-15} * 10))); do
    (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# --- certificates: a local CA and ONE leaf for *.hooks.test, localhost, 127.0.0.1 -----------
perfx_certs() {
  local d=$PERFX_DIR/certs
  mkdir -p "$d"
  [[ -s $d/chain.pem && -s $d/ca.pem ]] && return 0
  ( cd "$d" &&
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -sha256 \
      -subj "/CN=perfx local CA" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" -keyout ca.key -out ca.pem 2>/dev/null &&
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=*.$DOMAIN" \
      -keyout leaf.key -out leaf.csr 2>/dev/null &&
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:*.%s,DNS:localhost,IP:127.0.0.1\n' "$DOMAIN" > leaf.ext &&
    openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -sha256 \
      -extfile leaf.ext -out leaf.pem 2>/dev/null &&
    cat leaf.pem ca.pem > chain.pem && openssl verify -CAfile ca.pem leaf.pem >/dev/null ) ||
    { echo "certificate generation failed" >&2; exit 1; }
}

# --- /etc/hosts: h1..hN.hooks.test -> 127.0.1.x, one marked block, removed at exit ----------
SPREAD=${SPREAD:-16}   # hostnames map to 127.0.1.1 .. 127.0.1.SPREAD (the upstream listens on all)
hosts_add() {  # n
  HOSTS_TAG="perfx-$$"
  $PERFX_PY hosts-add "$HOSTS_TAG" "$1" "$DOMAIN" "$SPREAD" || { HOSTS_TAG=""; echo "could not edit /etc/hosts" >&2; exit 1; }
}

# --- accounting ---------------------------------------------------------------------------
family() { echo "$1" $(pgrep -P "$1" 2>/dev/null); }   # process + children (nginx workers)
cpu_ticks() {  # pids... -> utime+stime ticks, all threads
  local s=0 p a
  for p in "$@"; do
    [[ -r /proc/$p/stat ]] || continue
    read -ra a <<<"$(sed 's/^.*) //' "/proc/$p/stat")"
    s=$(( s + a[11] + a[12] ))
  done
  echo $s
}
rss_kib() {  # key pids...
  local key=$1 t=0 p v; shift
  for p in "$@"; do v=$(awk -v k="$key:" '$1 == k {print $2}' "/proc/$p/status" 2>/dev/null); t=$((t + ${v:-0})); done
  echo $t
}
up_accepts() { curl -fsS -m 5 "http://127.0.0.1:$UP_STATUS_PORT/" 2>/dev/null | awk 'NR==3{print $1}'; }
sys_busy() { awk '/^cpu[0-9]/{b=$2+$3+$4+$7+$8+$9; t=b+$5+$6; printf "%d %d ", b, t}' /proc/stat; }
up_conns() {  # pids... -> established TCP connections to :UP_PORT owned by these pids
  $PERFX_PY conns "$UP_PORT" "$@"
}
wait_quiet() {
  local t0=$SECONDS pct
  (( QUIET_WAIT_MAX > 0 )) || return 0
  while :; do
    pct=$($PY "$HERE/foreign.py" sample 1 $$)
    awk -v p="$pct" -v q="$QUIET_PCT" 'BEGIN{exit !(p < q)}' && return 0
    (( SECONDS - t0 >= QUIET_WAIT_MAX )) && { log "machine still busy (others at ${pct}% of a core), running anyway"; return 1; }
    log "waiting for a quiet machine: others at ${pct}% of a core"
    sleep 4
  done
}

# --- the TLS upstream: nginx, one server for *.hooks.test/localhost, fixed 200 -------------
# MODE keepalive: keep-alive, no access log.  MODE cold: `keepalive_timeout 0` (Connection: close
# on every response) and an access log with $ssl_session_reused, to count resumed handshakes.
UP_WORKERS=${UP_WORKERS:-}    # (default 1) >1: more fds (each worker has its own limit), `reuseport` spreads accepts
start_upstream() {  # mode dir
  local mode=$1 d=$2 ka logline listens="" k rp=""
  mkdir -p "$d"
  UP_WORKERS=${UP_WORKERS:-1}
  (( UP_WORKERS > 1 )) && rp=" reuseport"
  listens="listen 127.0.0.1:$UP_PORT ssl$rp;"
  for k in $(seq "$SPREAD"); do listens+=$'\n'"        listen 127.0.1.$k:$UP_PORT ssl$rp;"; done
  if [[ $mode == cold ]]; then
    ka="keepalive_timeout 0;"
    logline="log_format perfx '\$ssl_session_reused \$host \$ssl_protocol \$connection_requests \$status \$http_x_storno_signature \$ssl_curve \$ssl_cipher';
    access_log $d/access.log perfx buffer=256k flush=1s;"
  else
    ka="keepalive_timeout 120s; keepalive_requests 10000000;"
    logline="access_log off;"
  fi
  cat > "$d/nginx.conf" <<EOF
worker_processes $UP_WORKERS;
worker_rlimit_nofile $(ulimit -Hn);
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections $(( $(ulimit -Hn) - 100 )); }
http {
    $logline
    client_body_temp_path $d/body;
    client_max_body_size 2m;
    client_body_buffer_size 128k;
    $ka
    ssl_session_cache shared:PERFX:64m;   # server-side cache, far larger than any client asks for
    ssl_session_timeout 1h;
    server {
        $listens
        server_name *.$DOMAIN localhost;
        ssl_certificate $PERFX_DIR/certs/chain.pem;
        ssl_certificate_key $PERFX_DIR/certs/leaf.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            add_header X-Seen-Signature \$http_x_storno_signature always;
            add_header X-Seen-Host \$host always;
            add_header X-Seen-SNI \$ssl_server_name always;
            add_header X-Seen-Reused \$ssl_session_reused always;
            add_header X-Seen-Proto \$ssl_protocol always;
            return 200 "ok\n";
        }
    }
    server {
        listen 127.0.0.1:$UP_STATUS_PORT;
        access_log off;
        location / { stub_status; }
    }
}
EOF
  nginx -t -q -e "$d/error.log" -c "$d/nginx.conf" -p "$d" || { echo "upstream nginx config fails" >&2; exit 1; }
  taskset -c "$UPSTREAM_CPU" nginx -e "$d/error.log" -c "$d/nginx.conf" -p "$d" &
  PID_UP=$!; STARTED_PIDS+=("$PID_UP")
  wait_port "$UP_PORT" 20 || { echo "upstream did not start" >&2; exit 1; }
}

# --- the proxies ---------------------------------------------------------------------------
# Each gets the same endpoints (generated by perfx.py gen into $GEN): hooksign a store file,
# pingora-sign a JSON map, nginx one upstream block per destination and a map choosing it.
start_nginx_proxy() {  # dir name(nginx|nginx12): runs DIR/NAME-proxy.conf
  local d=$1 nm=${2:-nginx} pid
  nginx -t -q -e "$d/$nm-proxy/error.log" -c "$d/$nm-proxy.conf" -p "$d/$nm-proxy" || { echo "$nm config fails" >&2; exit 1; }
  taskset -c "$PROXY_CPU" nginx -e "$d/$nm-proxy/error.log" -c "$d/$nm-proxy.conf" -p "$d/$nm-proxy" &
  pid=$!; STARTED_PIDS+=("$pid")
  if [[ $nm == nginx ]]; then PID_nginx=$pid; else PID_nginx12=$pid; fi
  wait_port "$(target_port "$nm")" 600 || { echo "$nm proxy did not start" >&2; exit 1; }
}
start_hooksign() {  # dir (holds hooksign.toml, store.toml)
  local d=$1
  "$HOOKSIGN_BIN" check --config "$d/hooksign.toml" > "$d/hooksign-check.log" 2>&1 || { cat "$d/hooksign-check.log" >&2; exit 1; }
  RUST_LOG=${HOOKSIGN_LOG:-warn} taskset -c "$PROXY_CPU" "$HOOKSIGN_BIN" serve --config "$d/hooksign.toml" > "$d/hooksign.log" 2>&1 &
  PID_hooksign=$!; STARTED_PIDS+=("$PID_hooksign")
  wait_port "$HS_PORT" 120 || { echo "hooksign did not start" >&2; cat "$d/hooksign.log" >&2; exit 1; }
  for _ in $(seq 600); do curl -fsS -o /dev/null "http://127.0.0.1:$HS_ADMIN/readyz" 2>/dev/null && return 0; sleep 0.2; done
  echo "hooksign not ready" >&2; exit 1
}
start_hsbase() {  # dir: the same config and store as hooksign, on its own ports and store copy
  local d=$1
  [[ -x $HOOKSIGN_BASE_BIN ]] || { echo "target hsbase but no $HOOKSIGN_BASE_BIN" >&2; exit 1; }
  cp "$d/store.toml" "$d/store-hsbase.toml"
  sed -e "s/127.0.0.1:$HS_PORT\"/127.0.0.1:$HSB_PORT\"/" -e "s/127.0.0.1:$HS_ADMIN\"/127.0.0.1:$HSB_ADMIN\"/" \
      -e 's/^path = "store.toml"/path = "store-hsbase.toml"/' "$d/hooksign.toml" > "$d/hsbase.toml"
  "$HOOKSIGN_BASE_BIN" check --config "$d/hsbase.toml" > "$d/hsbase-check.log" 2>&1 || { cat "$d/hsbase-check.log" >&2; exit 1; }
  RUST_LOG=${HOOKSIGN_LOG:-warn} taskset -c "$PROXY_CPU" "$HOOKSIGN_BASE_BIN" serve --config "$d/hsbase.toml" > "$d/hsbase.log" 2>&1 &
  PID_hsbase=$!; STARTED_PIDS+=("$PID_hsbase")
  wait_port "$HSB_PORT" 120 || { echo "hsbase did not start" >&2; cat "$d/hsbase.log" >&2; exit 1; }
  for _ in $(seq 600); do curl -fsS -o /dev/null "http://127.0.0.1:$HSB_ADMIN/readyz" 2>/dev/null && return 0; sleep 0.2; done
  echo "hsbase not ready" >&2; exit 1
}
start_target() {  # target dir
  case $1 in nginx|nginx12) start_nginx_proxy "$2" "$1";; hooksign) start_hooksign "$2";; hsbase) start_hsbase "$2";; pingora) start_pingora "$2";; esac
}
start_pingora() {  # dir (holds pingora.json)
  local d=$1
  RUST_LOG=${PINGORA_LOG:-error} taskset -c "$PROXY_CPU" "$PINGORA_BIN" "$d/pingora.json" > "$d/pingora.log" 2>&1 &
  PID_pingora=$!; STARTED_PIDS+=("$PID_pingora")
  wait_port "$PG_PORT" 600 || { echo "pingora-sign did not start" >&2; cat "$d/pingora.log" >&2; exit 1; }
}
target_port() { case $1 in nginx) echo "$NGINX_PORT";; nginx12) echo "$NGINX12_PORT";; hooksign) echo "$HS_PORT";; hsbase) echo "$HSB_PORT";; pingora) echo "$PG_PORT";; esac; }
target_pid() { case $1 in nginx) echo "$PID_nginx";; nginx12) echo "$PID_nginx12";; hooksign) echo "$PID_hooksign";; hsbase) echo "$PID_hsbase";; pingora) echo "$PID_pingora";; esac; }
default_targets() { if [[ -x $PINGORA_BIN ]]; then echo "nginx hooksign pingora"; else echo "nginx hooksign"; fi; }

# --- signature check: deliveries through a proxy to K random endpoints ------------------------
# The upstream echoes the X-Storno-Signature, Host and SNI it saw; each signature is verified with
# `hooksign verify` against THAT endpoint's secret, and Host/SNI must be the endpoint's hostname.
check_deliveries() {  # target gen-dir body-file k -> prints "sig-ok" / "routed-ok" / "FAIL: ..."
  local t=$1 g=$2 body=$3 k=${4:-3} port line idx uuid secret host out code sig shost sni proto res=ok
  port=$(target_port "$t")
  while read -r line; do
    read -r idx uuid secret host <<<"$line"
    out=$(curl -sS -m 10 -o /dev/null -D - -X POST -H 'Content-Type: application/json' \
          -H "X-Webhook-Id: $uuid" --data-binary @"$body" "http://127.0.0.1:$port/hook" 2>&1) || { echo "FAIL: curl $t"; return; }
    code=$(awk 'NR==1{print $2}' <<<"$out" | tr -d '\r')
    [[ $code == 200 ]] || { echo "FAIL: $t http $code for endpoint $idx"; return; }
    sig=$(awk -F': ' 'tolower($1)=="x-seen-signature"{print $2}' <<<"$out" | tr -d '\r')
    shost=$(awk -F': ' 'tolower($1)=="x-seen-host"{print $2}' <<<"$out" | tr -d '\r')
    sni=$(awk -F': ' 'tolower($1)=="x-seen-sni"{print $2}' <<<"$out" | tr -d '\r')
    proto=$(awk -F': ' 'tolower($1)=="x-seen-proto"{print $2}' <<<"$out" | tr -d '\r')
    [[ $shost == "$host" && $sni == "$host" ]] || { echo "FAIL: $t endpoint $idx reached host=$shost sni=$sni, want $host"; return; }
    if [[ $t == nginx* ]]; then res=routed-ok; continue; fi
    HOOKSIGN_SECRET=$secret "$HOOKSIGN_BIN" verify --signature "$sig" "$body" \
      || { echo "FAIL: $t signature '$sig' for endpoint $idx does not verify"; return; }
    res=sig-ok
  done < <($PERFX_PY pick "$g/endpoints.tsv" "$k" "$SEED")
  # an unknown id must be refused (404), never forwarded
  code=$(curl -sS -m 10 -o /dev/null -w '%{http_code}' -X POST -H "X-Webhook-Id: 00000000-0000-4000-8000-000000000000" \
         --data-binary @"$body" "http://127.0.0.1:$port/hook")
  [[ $code == 404 ]] || { echo "FAIL: $t answered $code to an unknown id"; return; }
  echo "$res $proto"
}

# --- one wrk run ------------------------------------------------------------------------------
# run_wrk target duration body-bytes ids-file dist -> sets WRK_RESULT (JSON) and per-run figures
measure_run() {  # target body ids dist duration extra-json -> prints one JSON line
  local t=$1 b=$2 ids=$3 dist=$4 dur=$5 extra=${6:-"{}"} port pid pids upids c0 c1 u0 u1 out res fticks conns rss hwm a0 a1 s0 s1
  port=$(target_port "$t"); pid=$(target_pid "$t")
  read -ra pids <<<"$(family "$pid")"; read -ra upids <<<"$(family "$PID_UP")"
  $PY "$HERE/foreign.py" snap "$RUNDIR/snap0.json"
  a0=$(up_accepts); s0=$(sys_busy)
  c0=$(cpu_ticks "${pids[@]}"); u0=$(cpu_ticks "${upids[@]}")
  out=$(IDS_FILE=$ids DIST=$dist ZIPF_S=${ZIPF_S:-1.1} BODY_BYTES=$b SEED=$SEED timeout $((dur + 30)) \
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${dur}s" --timeout 10s -s "$HERE/fanout.lua" "http://127.0.0.1:$port/hook" 2>&1)
  c1=$(cpu_ticks "${pids[@]}"); u1=$(cpu_ticks "${upids[@]}"); s1=$(sys_busy); a1=$(up_accepts)
  $PY "$HERE/foreign.py" snap "$RUNDIR/snap1.json"
  fticks=$($PY "$HERE/foreign.py" diff "$RUNDIR/snap0.json" "$RUNDIR/snap1.json" $$)
  conns=$(up_conns "${pids[@]}")
  rss=$(rss_kib VmRSS "${pids[@]}"); hwm=$(rss_kib VmHWM "${pids[@]}")
  res=$(grep '^RESULT ' <<<"$out" | sed 's/^RESULT //')
  [[ -n $res ]] || { log "wrk failed for $t: $(tail -3 <<<"$out")"; res="{\"requests\":0,\"duration_us\":$((dur * 1000000))}"; }
  $PY - "$t" "$res" "$c0" "$c1" "$u0" "$u1" "$CLK_TCK" "$conns" "$rss" "$hwm" "$fticks" "$extra" "${a0:-0}" "${a1:-0}" "$s0" "$s1" <<'PY'
import json, sys
t, res, c0, c1, u0, u1, tck, conns, rss, hwm, fticks, extra, a0, a1, s0, s1 = sys.argv[1:17]
r = json.loads(res); n = max(r.get("requests", 0), 1); tck = int(tck); secs = r["duration_us"] / 1e6
r.update(json.loads(extra)); r["target"] = t
r["rps"] = r["requests"] / secs
r["cpu_us"] = (int(c1) - int(c0)) / tck * 1e6 / n
r["up_cpu_us"] = (int(u1) - int(u0)) / tck * 1e6 / n
r["up_conns"] = int(conns); r["rss_kib"] = int(rss); r["hwm_kib"] = int(hwm)
r["foreign_pct"] = round(int(fticks) / tck / secs * 100, 1)
r["new_up_conns"] = max(int(a1) - int(a0) - 1, 0)      # accepted by the upstream during the run (less our status probe)
a = list(map(int, s0.split())); z = list(map(int, s1.split()))
r["busy"] = [round((z[i] - a[i]) / max(z[i + 1] - a[i + 1], 1) * 100) for i in range(0, len(a), 2)]
print(json.dumps(r))
PY
}
