#!/usr/bin/env python3
"""profile.py OUT TAG... : the tables of profile.sh. The first TAG is the base (single origin);
every other one is compared with it. Reads OUT/raw.jsonl (the measured runs), OUT/TAG.report.txt
(`perf report --no-children --sort dso,sym`) and OUT/TAG.stat.txt (`perf stat -x,`).

A symbol's cost per request is its share of the run's samples times the run's CPU µs per request
(utime+stime of the process over wrk's request count, measured during the sampled run)."""
import json, os, re, sys
from collections import defaultdict

LINE = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*?)\s*$")

# (group, pattern on the symbol), first match wins; kernel symbols are matched with "k:" first.
GROUPS = [
    ("kernel: epoll, poll", r"^k:.*(ep_|epoll|do_epoll|sock_poll|tcp_poll)"),
    ("kernel: scheduler, wake-ups, futex", r"^k:.*(schedule|wake|task_switch|futex|select_task|enqueue|dequeue|update_curr|pick_next|idle|hrtimer|tick_)"),
    ("kernel: syscall entry/exit", r"^k:.*(entry_SYSCALL|syscall_|do_syscall|__x64_sys|exit_to_user|syscall_return|fpregs|switch_fpu|native_write_msr)"),
    ("kernel: copies to/from user", r"^k:.*(copy_user|_copy_|copyin|copyout|csum|memcpy|memmove|rep_movs)"),
    ("kernel: TCP/IP, loopback, sockets", r"^k:.*(tcp|ip_|ipv|inet|skb|sock|sk_|net_|netif|dev_|__dev|loopback|dst_|nf_|lock_sock|release_sock|__napi|napi|rcv|xmit|softirq|do_softirq|neigh|__kfree|kfree_skb|kmalloc|kmem_cache|__alloc|slab|page_frag|alloc_skb)"),
    ("kernel: memory, page faults", r"^k:.*(page|fault|mm_|folio|pte|pmd|vma|lru|memcg|zone)"),
    ("kernel: other", r"^k:"),
    ("TLS record work (rustls, ring AES-GCM)", r"(rustls|ring_core|ring::|aes|gcm|GFp|chacha|poly1305|ghash|tokio_rustls)"),
    ("signing (SHA-256/HMAC)", r"(sha256|sha2::|Sha256|hmac|sha_ni|compress256)"),
    ("allocator (glibc malloc/free)", r"(malloc|_int_free|cfree|__libc_free|realloc|tcache|calloc|unlink_chunk|malloc_consolidate|__libc_calloc|arena)"),
    ("memcpy/memmove/memset", r"(memcpy|memmove|memset|__memcmp|memcmp|bcmp)"),
    ("hyper (h1 client and server)", r"(hyper::|hyper_util::|httparse|want::)"),
    ("http types (HeaderMap, Uri)", r"(^http::|<http::|http::header|http::uri|bytes::)"),
    ("tokio (scheduler, I/O driver, timers, channels)", r"(tokio::|mio::|parking_lot|crossbeam)"),
    ("hooksign (proxy, pool, store lookup, metrics)", r"(hooksign|prometheus|arc_swap|tracing)"),
    ("hashing (HashMap lookups)", r"(hash|Hash|sip|fx|ahash|foldhash)"),
    ("libc other", r"(libc|pthread|clock_gettime|__vdso|vdso)"),
    ("other user space", r".*"),
]
COMPILED = [(g, re.compile(p)) for g, p in GROUPS]


def group_of(kind, sym, dso):
    key = ("k:" if kind == "k" else "") + sym
    if kind != "k" and "vdso" in dso:
        return "libc other"
    for g, rx in COMPILED:
        if rx.search(key):
            return g
    return "other user space"


def report(path):
    syms = defaultdict(float)
    for line in open(path, errors="replace"):
        m = LINE.match(line)
        if not m:
            continue
        pct, dso, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4)
        sym = re.sub(r"::h[0-9a-f]{16}$", "", sym)
        syms[(kind, dso, sym)] += pct
    return syms


def stat(path):
    out = {}
    if not os.path.exists(path):
        return out
    for line in open(path):
        parts = line.strip().split(",")
        if len(parts) < 3 or line.startswith("#"):
            continue
        try:
            out[parts[2]] = float(parts[0])
        except ValueError:
            pass
    return out


def short(sym, width=78):
    sym = re.sub(r"<[^<>]*(<[^<>]*>[^<>]*)*>", "<…>", sym)
    return sym if len(sym) <= width else sym[: width - 1] + "…"


def main():
    out, tags = sys.argv[1], list(dict.fromkeys(sys.argv[2:]))  # a repeated workload: its last run
    runs = {}
    for line in open(os.path.join(out, "raw.jsonl")):
        r = json.loads(line)
        if "profile" in r:
            runs[(r["profile"], r.get("under"))] = r
    base = tags[0]
    cost = {}   # tag -> {(kind,dso,sym): µs/req}
    groups = {}
    user_k = {}
    for t in tags:
        r = runs.get((t, "perf record"))
        if not r:
            continue
        rep = report(os.path.join(out, f"{t}.report.txt"))
        tot = sum(rep.values()) or 1
        cost[t] = {k: v / tot * r["cpu_us"] for k, v in rep.items()}
        g = defaultdict(float)
        for (kind, dso, sym), v in cost[t].items():
            g[group_of(kind, sym, dso)] += v
        groups[t] = g
        user_k[t] = (sum(v for (kind, _, _), v in cost[t].items() if kind != "k"),
                     sum(v for (kind, _, _), v in cost[t].items() if kind == "k"))
    print("## Runs\n")
    print("| workload | req/s | CPU µs/req (perf record run) | user | kernel | CPU µs/req (perf stat run) | syscalls/req | epoll_wait/req | writes/req | reads/req | ctx switches/req | upstream conns | new per 1k | core busy % |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for t in tags:
        r = runs.get((t, "perf record")); s = runs.get((t, "perf stat"))
        if not r:
            continue
        st = stat(os.path.join(out, f"{t}.stat.txt"))
        n = max(s["requests"], 1) if s else 1
        per = lambda *ev: sum(st.get(e, 0) for e in ev) / n
        newk = 1000 * r.get("new_up_conns", 0) / max(r["requests"], 1)
        print(f"| {t} | {r['rps']:,.0f} | {r['cpu_us']:.1f} | {user_k[t][0]:.1f} | {user_k[t][1]:.1f} | "
              f"{s['cpu_us'] if s else float('nan'):.1f} | {per('raw_syscalls:sys_enter'):.2f} | "
              f"{per('syscalls:sys_enter_epoll_wait'):.2f} | {per('syscalls:sys_enter_write', 'syscalls:sys_enter_writev', 'syscalls:sys_enter_sendto'):.2f} | "
              f"{per('syscalls:sys_enter_read', 'syscalls:sys_enter_recvfrom'):.2f} | {per('context-switches'):.3f} | "
              f"{r['up_conns']:,} | {newk:.1f} | {r.get('busy')} |")
    others = [t for t in tags[1:] if t in cost]
    if base not in cost:
        return
    print("\n## By group (µs per request)\n")
    print("| group | " + " | ".join([base] + [f"{t} | Δ" for t in others]) + " |")
    print("| --- | " + " | ".join(["---:"] * (1 + 2 * len(others))) + " |")
    names = sorted({g for t in groups for g in groups[t]}, key=lambda g: -max(groups[t].get(g, 0) - groups[base].get(g, 0) for t in others) if others else 0)
    for g in names:
        row = [f"{groups[base].get(g, 0):.2f}"]
        for t in others:
            row += [f"{groups[t].get(g, 0):.2f}", f"{groups[t].get(g, 0) - groups[base].get(g, 0):+.2f}"]
        print(f"| {g} | " + " | ".join(row) + " |")
    tot = [f"{sum(groups[base].values()):.1f}"]
    for t in others:
        tot += [f"{sum(groups[t].values()):.1f}", f"{sum(groups[t].values()) - sum(groups[base].values()):+.1f}"]
    print("| **total** | " + " | ".join(tot) + " |")
    for t in others:
        print(f"\n## Symbols whose cost differs most: {t} against {base} (µs per request)\n")
        print(f"| symbol | group | {base} | {t} | Δ |")
        print("| --- | --- | ---: | ---: | ---: |")
        keys = set(cost[base]) | set(cost[t])
        diff = sorted(keys, key=lambda k: -(cost[t].get(k, 0) - cost[base].get(k, 0)))
        for k in diff[:25]:
            kind, dso, sym = k
            print(f"| `{short(sym)}` [{kind}] | {group_of(kind, sym, dso)} | {cost[base].get(k, 0):.2f} | {cost[t].get(k, 0):.2f} | {cost[t].get(k, 0) - cost[base].get(k, 0):+.2f} |")


if __name__ == "__main__":
    main()
