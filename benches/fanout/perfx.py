#!/usr/bin/env python3
"""Helpers for fanout.sh / cold.sh / side-by-side.sh (see perfx-lib.sh).

  perfx.py gen DIR N [--keepalive K] [--pool P] [--nginx-addr name|ip] ...   endpoints + configs
  perfx.py hosts-add TAG N DOMAIN SPREAD add h1..hN.DOMAIN -> 127.0.1.x (x < SPREAD) as one marked block
  perfx.py hosts-remove TAG              remove that block (and blocks of perfx runs no longer alive)
  perfx.py conns PORT PID...             established TCP connections to :PORT owned by PIDs
  perfx.py pick ENDPOINTS.tsv K SEED     K random endpoint lines
  perfx.py logslice LOG OFF0 OFF1        resumed/full handshakes etc. in an upstream access log slice
  perfx.py logsig LOG OFF0 OFF1 ENDPOINTS.tsv   "host secret signature" of one logged delivery
  perfx.py gai NAME...                   getaddrinfo() cost per call (µs) for these names
  perfx.py summarize RAW.jsonl [--meta FILE]   markdown tables (medians of rounds, ratios to nginx)
"""
import argparse, json, os, random, re, socket, statistics as st, subprocess, sys, time, uuid
from collections import defaultdict

HOSTS = "/etc/hosts"


def gen(a):
    rnd = random.Random(a.seed)
    d = a.dir
    os.makedirs(d, exist_ok=True)
    eps = []
    for i in range(1, a.n + 1):
        u = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
        s = "whsec_" + "".join(rnd.choice("0123456789abcdef") for _ in range(64))
        eps.append((i, u, s, f"h{i}.{a.domain}"))
    with open(os.path.join(d, "endpoints.tsv"), "w") as f:
        for e in eps:
            f.write("%d\t%s\t%s\t%s\n" % e)
    with open(os.path.join(d, "uuids.txt"), "w") as f:
        f.write("".join(e[1] + "\n" for e in eps))
    url = lambda h: f"https://{h}:{a.up_port}/hook"
    # hooksign: the store file (README "The store file") and its config
    with open(os.path.join(d, "store.toml"), "w") as f:
        for i, u, s, h in eps:
            f.write(f'[[webhooks]]\nuuid = "{u}"\ncompany = "550e8400-e29b-41d4-a716-446655440000"\n'
                    f'url = "{url(h)}"\nevents = ["*"]\nstatus = "active"\nsecret = "{s}"\n'
                    f'created_at = "2026-02-18T10:00:00Z"\nupdated_at = "2026-02-18T10:00:00Z"\n\n')
    with open(os.path.join(d, "hooksign.toml"), "w") as f:
        # The pool sized for the fan-out as pingora's is (pool_size below), and idle connections
        # kept 90 s as pingora does (hooksign's default, 4 s, is for customers' servers that close
        # at 5 s; this upstream keeps them 120 s).
        f.write(f'[proxy]\nlisten = "127.0.0.1:{a.hs_port}"\npool_idle_timeout = "90s"\n'
                f'pool_max_idle = {max(a.pool, 64)}\n[admin]\nlisten = "127.0.0.1:{a.hs_admin}"\n'
                f'[store]\npath = "store.toml"\n[egress]\nallow_cidrs = ["127.0.0.0/8"]\nca_file = "{a.ca}"\n'
                f'[server]\nworker_threads = {a.threads}\n')
    # pingora-sign: a JSON map uuid -> (url, secret)
    with open(os.path.join(d, "pingora.json"), "w") as f:
        json.dump({"listen": f"127.0.0.1:{a.pg_port}", "ca_file": a.ca, "threads": a.threads,
                   "pool_size": a.pool, "endpoints": {u: {"url": url(h), "secret": s} for i, u, s, h in eps}}, f)
    # nginx: one upstream block per destination + a map from X-Webhook-Id to it. Two variants:
    #   nginx-proxy.conf    proxy_ssl_protocols TLSv1.2 TLSv1.3: TLS 1.3 to the upstream, as hooksign
    #   nginx12-proxy.conf  nginx 1.22's default proxy_ssl_protocols (TLSv1 TLSv1.1 TLSv1.2): TLS 1.2
    nginx_conf(a, eps, "nginx-proxy", a.nginx_port, "proxy_ssl_protocols TLSv1.2 TLSv1.3;")
    nginx_conf(a, eps, "nginx12-proxy", a.nginx12_port, "# proxy_ssl_protocols: nginx 1.22 default (up to TLS 1.2)")


def nginx_conf(a, eps, name, port, protocols):
    nd = os.path.join(a.dir, name)
    os.makedirs(nd, exist_ok=True)
    lim = a.nofile
    w = []
    w.append(f"worker_processes 1;\nworker_rlimit_nofile {lim};\ndaemon off;\npid {nd}/nginx.pid;\n"
             f"error_log {nd}/error.log warn;\nevents {{ worker_connections {lim - 100}; }}\nhttp {{\n"
             f"    access_log off;\n    client_body_temp_path {nd}/body; proxy_temp_path {nd}/proxy;\n"
             f"    fastcgi_temp_path {nd}/fcgi; uwsgi_temp_path {nd}/uwsgi; scgi_temp_path {nd}/scgi;\n"
             f"    keepalive_requests 10000000;\n    keepalive_timeout 120s;\n    client_max_body_size 2m;\n"
             f"    client_body_buffer_size 128k;\n"
             f"    map_hash_max_size {max(4096, 8 * a.n)};\n    map_hash_bucket_size 256;\n"
             f"    map $http_x_webhook_id $dest {{\n        default \"\";\n")
    for i, u, s, h in eps:
        w.append(f"        {u} {i};\n")
    w.append("    }\n")
    for i, u, s, h in eps:
        srv = f"{h}:{a.up_port}" if a.nginx_addr == "name" else f"127.0.0.1:{a.up_port}"
        w.append(f"    upstream d{i} {{ server {srv}; keepalive {a.keepalive}; keepalive_requests 10000000; "
                 f"keepalive_timeout 120s; }}\n")
    w.append(f"""    server {{
        listen 127.0.0.1:{port};
        location / {{
            if ($dest = "") {{ return 404; }}
            proxy_pass https://d$dest;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host h$dest.{a.domain}:{a.up_port};
            proxy_set_header X-Webhook-Id "";
            proxy_ssl_server_name on;
            proxy_ssl_name h$dest.{a.domain};
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {a.ca};
            proxy_ssl_session_reuse on;
            {protocols}
        }}
    }}
}}
""")
    with open(os.path.join(a.dir, name + ".conf"), "w") as f:
        f.write("".join(w))


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _write_hosts(text):  # in place (the file may be a bind mount: keep its inode)
    with open(HOSTS, "r+") as f:
        f.seek(0); f.write(text); f.truncate()


def _strip_blocks(text, tag=None):
    out, skip = [], None
    for line in text.splitlines(keepends=True):
        m = re.match(r"# >>> (perfx-(\d+)) ", line)
        if skip is None and m and (m.group(1) == tag or not _alive(int(m.group(2)))):
            skip = m.group(1); continue
        if skip is not None:
            if line.startswith(f"# <<< {skip} "):
                skip = None
            continue
        out.append(line)
    return "".join(out)


def hosts_add(tag, n, domain, spread):
    """h{i}.DOMAIN -> 127.0.1.(1 + (i-1) % spread): hostnames spread over `spread` loopback
    addresses, so that more than one proxy's pool of thousands of connections to :8443 fits in
    the ephemeral port range (one range per destination address)."""
    text = _strip_blocks(open(HOSTS).read(), tag)
    if text and not text.endswith("\n"):
        text += "\n"
    block = [f"# >>> {tag} {domain}: h1..h{n}.{domain} for the fan-out benchmark (fanout.sh/cold.sh); removed when it exits >>>\n"]
    block += [f"127.0.1.{1 + (i - 1) % spread} h{i}.{domain}\n" for i in range(1, n + 1)]
    block.append(f"# <<< {tag} <<<\n")
    _write_hosts(text + "".join(block))


def hosts_remove(tag):
    _write_hosts(_strip_blocks(open(HOSTS).read(), tag))


def conns(port, pids):
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"( dport = :{port} )"],
                         capture_output=True, text=True).stdout
    want = set(pids)
    n = 0
    for line in out.splitlines():
        got = set(re.findall(r"pid=(\d+)", line))
        if got & want:
            n += 1
    print(n)


def pick(path, k, seed):
    lines = open(path).read().splitlines()
    rnd = random.Random(int(seed) + 7)
    for line in rnd.sample(lines, min(int(k), len(lines))):
        print(line.replace("\t", " "))


def _slice(path, o0, o1):
    with open(path, "rb") as f:
        f.seek(int(o0)); return f.read(int(o1) - int(o0)).decode(errors="replace").splitlines()


def logslice(path, o0, o1):
    lines = _slice(path, o0, o1)
    r = dict(logged=0, resumed=0, full=0, multi_req_conns=0, non200=0, hosts=0, protocols={}, kx={})
    hosts = set()
    for line in lines:
        f = line.split(" ")
        if len(f) < 5:
            continue
        r["logged"] += 1
        if f[0] == "r": r["resumed"] += 1
        else: r["full"] += 1
        hosts.add(f[1])
        r["protocols"][f[2]] = r["protocols"].get(f[2], 0) + 1
        if f[3] != "1": r["multi_req_conns"] += 1
        if len(f) >= 8:
            k = f[6] + "/" + f[7]
            r["kx"][k] = r["kx"].get(k, 0) + 1
        if f[4] != "200": r["non200"] += 1
    r["hosts"] = len(hosts)
    print(json.dumps(r))


def logsig(path, o0, o1, eps):
    sec = {}
    for line in open(eps):
        i, u, s, h = line.split()
        sec[h] = s
    for line in _slice(path, o0, o1):
        f = line.split(" ")
        if len(f) >= 6 and f[1] in sec and re.fullmatch(r"[0-9a-f]{64}", f[5]):
            print(f[1], sec[f[1]], f[5]); return
    print("none - -")


def gai(names):
    for nm in names:
        socket.getaddrinfo(nm, 8443, socket.AF_UNSPEC, socket.SOCK_STREAM)
    t0 = time.perf_counter(); k = 0
    while time.perf_counter() - t0 < 1.0:
        for nm in names:
            socket.getaddrinfo(nm, 8443, socket.AF_UNSPEC, socket.SOCK_STREAM); k += 1
    print(f"{(time.perf_counter() - t0) / k * 1e6:.0f}")


def runline(js):
    r = json.loads(js)
    e = sum(r.get(k, 0) for k in ("err_connect", "err_read", "err_write", "err_timeout"))
    extra = ""
    if "resumed" in r:
        extra = f" handshakes full {r['full']} resumed {r['resumed']}"
    print(f"  {r['target']:<9} N={r.get('n')} {r.get('dist', ''):<7} round {r.get('round')}: {r['rps']:8.0f} req/s "
          f"p50 {r.get('p50_us', 0) / 1e3:.2f} ms p99 {r.get('p99_us', 0) / 1e3:.2f} ms CPU {r['cpu_us']:.1f} us/req "
          f"up {r['up_cpu_us']:.1f} RSS {r['rss_kib'] / 1024:.1f} MiB conns {r['up_conns']} new {r.get('new_up_conns')} busy {r.get('busy')} err {e} "
          f"non2xx {r.get('non2xx', 0)} others {r['foreign_pct']}%{extra}", file=sys.stderr)


def regime(a, cold):
    """Which regime a row measured: every delivery on a new connection (cold: full or resumed
    handshakes), a warm pool (at most 5 new upstream connections per 1,000 requests), or a pool
    that was reconnecting during the run."""
    if cold:
        tot = a["full"] + a["resumed"]
        share = 100 * a["resumed"] / tot if tot else 0
        return f"new conns, {'resumed' if share >= 50 else 'full'} handshakes ({share:.0f} % resumed)"
    if a["newc"] <= 5:
        return "warm pool (reused)"
    return f"reconnecting ({a['newc']:.0f} new per 1k)"


def summarize(raw, meta):
    runs = defaultdict(list); checks = {}; order = []; groups = []
    for line in open(raw):
        r = json.loads(line)
        if "check" in r:
            checks[(r["group"], r["target"])] = r["check"]; continue
        g = r["group"]
        if g not in groups: groups.append(g)
        if r["target"] not in order: order.append(r["target"])
        runs[(g, r["target"])].append(r)
    med = lambda xs: st.median(xs) if xs else None
    if meta:
        print(open(meta).read().strip().replace("\n", "  \n")); print()
    for g in groups:
        rows = {t: runs[(g, t)] for t in order if runs.get((g, t))}
        cold = any("resumed" in r for rs in rows.values() for r in rs)
        print(f"\n### {g}\n")
        head = "| proxy | req/s | p50 ms | p99 ms | CPU µs/req | upstream CPU µs/req | RSS MiB | upstream conns at end | new upstream conns per 1k req | busy cpu0/cpu1 % |"
        sep = "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        if cold:
            head += " full / resumed handshakes | resumed % |"; sep += " ---: | ---: |"
        head += " regime | RSS KiB per upstream conn | req/s ×nginx | p99 ×nginx | CPU ×nginx | errors | others' CPU % max | check |"
        sep += " --- | ---: | ---: | ---: | ---: | --- | ---: | --- |"
        print(head); print(sep)
        A = {}
        for t, rs in rows.items():
            A[t] = dict(rps=med([r["rps"] for r in rs]), p50=med([r.get("p50_us", 0) / 1e3 for r in rs]),
                        p99=med([r.get("p99_us", 0) / 1e3 for r in rs]), cpu=med([r["cpu_us"] for r in rs]),
                        up=med([r["up_cpu_us"] for r in rs]), rss=med([r["rss_kib"] / 1024 for r in rs]),
                        conns=med([r["up_conns"] for r in rs]),
                        newc=med([1000 * r.get("new_up_conns", 0) / max(r["requests"], 1) for r in rs]),
                        busy="/".join(str(med([r["busy"][i] for r in rs])) for i in range(len(rs[0].get("busy", [])))),
                        full=sum(r.get("full", 0) for r in rs), resumed=sum(r.get("resumed", 0) for r in rs),
                        errs=sum(r.get("err_connect", 0) + r.get("err_read", 0) + r.get("err_write", 0) + r.get("err_timeout", 0) for r in rs),
                        non2xx=sum(r.get("non2xx", 0) for r in rs), foreign=max(r.get("foreign_pct", 0) for r in rs), n=len(rs),
                        logged=[r["logged_sig"] for r in rs if r.get("logged_sig", "-") != "-"],
                        per_conn=med([(r["rss_kib"] - r["idle_rss_kib"]) / r["up_conns"] for r in rs
                                      if r.get("idle_rss_kib") and r["up_conns"] > 0]))
        base = A.get("nginx")
        logged = lambda a: "" if not a["logged"] else \
            f"; logged delivery verified {sum(x.startswith('verified') for x in a['logged'])}/{len(a['logged'])}"
        ratio = lambda k, t: "" if t == "nginx" or not base or not base[k] else f"{A[t][k] / base[k]:.2f}×"
        for t, a in A.items():
            line = (f"| {t} | {a['rps']:,.0f} | {a['p50']:.2f} | {a['p99']:.2f} | {a['cpu']:.1f} | {a['up']:.1f} | "
                    f"{a['rss']:.1f} | {a['conns']:.0f} | {a['newc']:.0f} | {a['busy']} |")
            if cold:
                tot = a["full"] + a["resumed"]
                line += f" {a['full']:,} / {a['resumed']:,} | {100 * a['resumed'] / tot if tot else 0:.0f} |"
            pc = "-" if a["per_conn"] is None else f"{a['per_conn']:.0f}"
            line += f" {regime(a, cold)} | {pc} |"
            line += (f" {ratio('rps', t)} | {ratio('p99', t)} | {ratio('cpu', t)} | {a['errs']} err, {a['non2xx']} non-2xx |"
                     f" {a['foreign']:.1f} | {checks.get((g, t), '-')}{logged(a)} |")
            print(line)
        if base and len(rows.get("nginx", [])) > 1:
            for t in A:
                if t == "nginx": continue
                pr = lambda k: " ".join(f"{x[k] / y[k]:.2f}" for x, y in zip(rows[t], rows["nginx"]) if y[k])
                print(f"\n{t}/nginx per round: req/s {pr('rps')}; CPU {pr('cpu_us')}; p99 {pr('p99_us')}", end="")
            print()


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "gen":
        p = argparse.ArgumentParser()
        p.add_argument("dir"); p.add_argument("n", type=int)
        p.add_argument("--domain", default="hooks.test"); p.add_argument("--up-port", type=int, default=8443)
        p.add_argument("--ca", required=True); p.add_argument("--seed", type=int, default=42)
        p.add_argument("--keepalive", type=int, default=8); p.add_argument("--pool", type=int, default=128)
        p.add_argument("--threads", type=int, default=1); p.add_argument("--nofile", type=int, default=20000)
        p.add_argument("--nginx-addr", choices=["name", "ip"], default="name")
        p.add_argument("--nginx-port", type=int, default=18180); p.add_argument("--nginx12-port", type=int, default=18183); p.add_argument("--hs-port", type=int, default=18181)
        p.add_argument("--hs-admin", type=int, default=18191); p.add_argument("--pg-port", type=int, default=18182)
        gen(p.parse_args(args))
    elif cmd == "hosts-add": hosts_add(args[0], int(args[1]), args[2], int(args[3]))
    elif cmd == "hosts-remove": hosts_remove(args[0])
    elif cmd == "conns": conns(args[0], args[1:])
    elif cmd == "pick": pick(*args)
    elif cmd == "logslice": logslice(*args)
    elif cmd == "logsig": logsig(*args)
    elif cmd == "gai": gai(args)
    elif cmd == "line": runline(args[0])
    elif cmd == "summarize":
        summarize(args[0], args[2] if len(args) > 2 and args[1] == "--meta" else None)
    else:
        sys.exit(__doc__)
