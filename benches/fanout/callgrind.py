#!/usr/bin/env python3
"""callgrind.py OUT TAG... : the tables of callgrind.sh. The first TAG is the base.

Per request (the counts of the measured window over wrk's completed requests), split into:
  - signing's SHA-256 (valgrind's CPU has no SHA-NI, so `sha2` runs its software rounds: about
    60,000 instructions per 1 KiB delivery that natively take ~1 µs);
  - TLS handshakes (the window's new connections: x25519, SHA-384 key schedule, ECDSA verify);
  - the store's delivery-record flush (a timer every 10 s of wall clock; under valgrind's ~50×
    slowdown it lands on 50× fewer requests than natively);
  - everything else: the request path itself.
"""
import json, os, re, subprocess, sys
from collections import defaultdict

CLASSES = [
    ("SHA-256 (software under valgrind)", re.compile(r"sha2::sha256|compress256")),
    ("TLS handshakes", re.compile(r"x25519|sha512|fe_|fe4_|ge_|nistz|p256|ecp_|table_select|bn_|mont|ecdsa|limbs_|LIMBS_|gfp_|x25519|scalar")),
    ("store record flush", re.compile(r"hooksign::store::|toml_out|time::formatting|uuid::fmt|EndpointRecord|serialize|format_time|drop_stale")),
]
ROW = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)$")


def functions(path):
    text = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", path],
                          capture_output=True, text=True).stdout
    events, fns, seen = None, defaultdict(lambda: defaultdict(int)), False
    for line in text.splitlines():
        if line.startswith("Events shown:"):
            events = line.split(":", 1)[1].split()
        if "file:function" in line:
            seen = True
            continue
        if not seen or not ROW.match(line):
            continue
        vals = re.findall(r"([\d,]+) \(\s*[\d.]+%\)|\s\.\s", line)
        parts = line.rsplit(None, 2)
        name = parts[-2] if parts[-1].startswith("[") else parts[-1]
        name = name.split(":", 1)[1] if ":" in name and not name.startswith("<") else name
        nums = [int(v.replace(",", "")) if v else 0 for v in vals][: len(events)]
        for e, v in zip(events, nums):
            fns[name][e] += v
    return events, fns


def classify(name):
    for c, rx in CLASSES:
        if rx.search(name):
            return c
    return "request path (the rest)"


def main():
    out, tags = sys.argv[1], sys.argv[2:]
    runs = {json.loads(l)["profile"]: json.loads(l) for l in open(os.path.join(out, "raw.jsonl"))}
    table = {}
    for t in tags:
        events, fns = functions(os.path.join(out, f"{t}.callgrind.out"))
        n = max(runs[t]["requests"], 1)
        per = defaultdict(lambda: defaultdict(float))
        for name, ev in fns.items():
            for e, v in ev.items():
                per[classify(name)][e] += v / n
                per["total"][e] += v / n
        table[t] = (per, runs[t])
    names = ["request path (the rest)"] + [c for c, _ in CLASSES] + ["total"]
    print("| workload | requests | new conns | " + " | ".join(f"Ir/req: {c}" for c in names) + " |")
    print("| --- | ---: | ---: | " + " | ".join(["---:"] * len(names)) + " |")
    for t in tags:
        per, r = table[t]
        print(f"| {t} | {r['requests']:,} | {r.get('new_up_conns', 0)} | " + " | ".join(f"{per[c]['Ir']:,.0f}" for c in names) + " |")
    print()
    print("| workload | request path: D1 misses/req | request path: LL misses/req | all: LL misses/req |")
    print("| --- | ---: | ---: | ---: |")
    for t in tags:
        per, r = table[t]
        p = per["request path (the rest)"]
        print(f"| {t} | {p['D1mr'] + p['D1mw']:,.0f} | {p['DLmr'] + p['DLmw']:,.1f} | {per['total']['DLmr'] + per['total']['DLmw']:,.1f} |")


if __name__ == "__main__":
    main()
