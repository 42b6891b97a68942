#!/usr/bin/python3
"""bench_net: request latency and throughput of the kv guest with redis-benchmark (issue #4).

One run builds its own network topology (scripts/topology.sh, removed again at exit, also
on Ctrl-C), then, for each round, for each configuration in turn (the order rotates every
round):
  unprotected    understudy run kv.elf --net-tap TAP
  fixed-25ms     ... --backup B --epoch-ms 25 --output-gather-ms -1  (epochs run 25 ms)
  output-0ms     ... --backup B --epoch-ms 25 --output-gather-ms 0   (held output ends the epoch)
  output-1ms     ... --output-gather-ms 1 (not with --quick)
starts the backup (backup namespace) and the primary (primary namespace), waits for
"kv: listening" and, protected, "protected: initial checkpoint acknowledged", then runs
redis-benchmark -t TESTS -c C -n N --csv from the client namespace for each C in --clients.
Figures per (config, test, clients) are the medians over the rounds. Also kept per config:
the primary's last "network:" line (hold p50/p99, stalls) and its "checkpoints:" lines
(ckpt/s, pause p50/p99; their medians) printed while each redis-benchmark ran.

Targets (issue #4), from figures of this run: added p50 for 1 client with output-triggered
checkpoints, p50(output-0ms) - p50(unprotected) <= 3 ms; throughput with 50 clients,
rps(output-0ms) / rps(unprotected) >= 0.5; per test. Table, then "JSON: {...}" last.
"""
import argparse
import atexit
import csv
import io
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from provenance import provenance

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPO = os.path.join(REPO, "scripts", "topology.sh")
GUEST, BACKUP = "10.77.0.2", "10.77.0.12"
PORT = 7400
TARGET_ADDED_P50_MS = 3.0
TARGET_FRACTION = 0.5

CONFIGS = {  # name -> extra arguments of `understudy run` (None: unprotected)
    "unprotected": None,
    "fixed-25ms": ["--epoch-ms", "25", "--output-gather-ms", "-1"],
    "output-0ms": ["--epoch-ms", "25", "--output-gather-ms", "0"],
    "output-1ms": ["--epoch-ms", "25", "--output-gather-ms", "1"],
}
# Requests per redis-benchmark run by config and clients: 1.5-2 s per test here (a fixed
# 25 ms epoch serves one client ~40 requests/s; --scale and --requests change them).
REQUESTS = {"unprotected": {1: 16000, 50: 60000}, "fixed-25ms": {1: 70, 50: 3500},
            "output-0ms": {1: 3500, 50: 25000}, "output-1ms": {1: 1100, 50: 20000}}

topology = None
children = []


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def cleanup():
    for p in children:
        if p.poll() is None:
            p.kill()
            p.wait()
    children.clear()
    global topology
    if topology:
        subprocess.run([TOPO, "down", topology], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        topology = None


def on_signal(signum, _frame):
    cleanup()
    sys.exit(128 + signum)


def netns(host, argv):
    return ["ip", "netns", "exec", "%s-%s" % (topology, host)] + argv


def spawn(host, argv, logpath):
    f = open(logpath, "w")
    p = subprocess.Popen(netns(host, argv), stdout=f, stderr=subprocess.STDOUT)
    f.close()
    children.append(p)
    return p


def stop(p, grace=10):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in children:
        children.remove(p)


def wait_log(p, path, pattern, timeout_s):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        with open(path, errors="replace") as f:
            if pattern in f.read():
                return
        if p.poll() is not None:
            break
        time.sleep(0.05)
    with open(path, errors="replace") as f:
        tail = f.read()[-2000:]
    raise RuntimeError("no %r in %s (exit %s):\n%s" % (pattern, path, p.poll(), tail))


def num(pattern, line, scale=1.0):
    m = re.search(pattern, line or "")
    return round(float(m.group(1)) * scale, 3) if m else None


def ckpt_figures(line):
    return {"ckpt_per_s": num(r"([\d.]+) ckpt/s", line), "pause_p50_us": num(r"pause p50 (\d+) us", line),
            "pause_p99_us": num(r"p99 (\d+) us", line)}


def redis_benchmark(tests, clients, n, timeout_s):
    argv = netns("client", ["redis-benchmark", "-h", GUEST, "-t", tests, "-c", str(clients), "-n", str(n), "--csv"])
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout_s)
    rows = {}
    for row in csv.DictReader(io.StringIO(r.stdout)):
        rows[row["test"]] = {"rps": float(row["rps"]), "avg_ms": float(row["avg_latency_ms"]),
                             "p50_ms": float(row["p50_latency_ms"]), "p99_ms": float(row["p99_latency_ms"]),
                             "max_ms": float(row["max_latency_ms"])}
    if r.returncode != 0 or not rows:
        raise RuntimeError("redis-benchmark exited %d: %s" % (r.returncode, (r.stderr + r.stdout)[-500:]))
    return rows


# --latency-samples: one client sends PING requests one after the other on one connection
# and prints each round trip in ms (for latency CDFs; redis-benchmark reports percentiles only).
PROBE = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for _ in range(int(sys.argv[3])):
    t0 = time.perf_counter()
    s.sendall(b"*1\r\n$4\r\nPING\r\n")
    buf = b""
    while not buf.endswith(b"\r\n"):
        chunk = s.recv(64)
        if not chunk:
            sys.exit("connection closed")
        buf += chunk
    print("%.4f" % ((time.perf_counter() - t0) * 1e3))
"""
SAMPLES = []  # (config, round, latency_ms)


def latency_samples(name, rnd, n, timeout_s):
    r = subprocess.run(netns("client", [sys.executable, "-c", PROBE, GUEST, "6379", str(n)]), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=timeout_s)
    if r.returncode != 0:
        raise RuntimeError("latency probe exited %d: %s" % (r.returncode, r.stderr[-300:]))
    SAMPLES.extend((name, rnd, float(v)) for v in r.stdout.split())


def run_config(args, name, workdir, rnd):
    """Boots kv under `name`, runs every (clients) benchmark; returns (rows, primary figures)."""
    extra = CONFIGS[name]
    plog = os.path.join(workdir, "%s-r%d-primary.log" % (name, rnd))
    argv = [args.understudy, "run", args.image, "--memory", "128M", "--net-tap", topology + "-tap",
            "-c", "net.ip=%s/24" % GUEST, "--timeout", "900"]
    backup, primary = None, None
    rows, figures = [], {"config": name, "round": rnd, "during": {}}
    try:
        if extra is not None:
            # A new port each time: the previous backup's closed connection may hold the
            # old one (TIME_WAIT) and the backup does not bind with SO_REUSEADDR.
            global PORT
            PORT += 1
            blog = os.path.join(workdir, "%s-r%d-backup.log" % (name, rnd))
            key = os.path.join(workdir, "link.key")  # the link key both hosts use (docs/security.md)
            if not os.path.exists(key):
                subprocess.run([args.understudy, "keygen", key], check=True, stdout=subprocess.DEVNULL)
            backup = spawn("backup", [args.understudy, "backup", "--listen", "%s:%d" % (BACKUP, PORT),
                                      "--link-key", key], blog)
            wait_log(backup, blog, "backup: listening", 10)
            argv += ["--backup", "%s:%d" % (BACKUP, PORT), "--link-key", key] + extra
        primary = spawn("primary", argv, plog)
        wait_log(primary, plog, "kv: listening", 30)
        if extra is not None:
            wait_log(primary, plog, "protected: initial checkpoint acknowledged", 60)
        for clients in args.clients:
            n = args.requests.get(clients) or REQUESTS[name].get(clients, 1000)
            n = max(clients, int(n * args.scale))
            start = os.path.getsize(plog)
            t0 = time.monotonic()
            res = redis_benchmark(args.tests, clients, n, args.bench_timeout)
            secs = time.monotonic() - t0
            time.sleep(0.05)
            with open(plog, errors="replace") as f:
                f.seek(start)
                during = [l for l in f.read().splitlines() if l.startswith("checkpoints:")]
            # The first line a run sees may cover idle time before it.
            during = [ckpt_figures(l) for l in (during[1:] if len(during) > 1 else during)]
            figures["during"][clients] = {k: med(d[k] for d in during) for k in ("ckpt_per_s", "pause_p50_us", "pause_p99_us")}
            log("  %-12s c=%-3d n=%-6d %5.1f s  %s" % (name, clients, n, secs, "  ".join(
                "%s %.0f/s p50 %.2f" % (t, v["rps"], v["p50_ms"]) for t, v in res.items())))
            for test, v in res.items():
                rows.append(dict(v, config=name, test=test, clients=clients, requests=n, round=rnd, seconds=round(secs, 2)))
        if args.latency_samples:
            latency_samples(name, rnd, args.latency_requests, args.bench_timeout)
    finally:
        if primary:
            stop(primary)
        if backup:  # `understudy backup` ignores SIGTERM here: killed after 0.2 s
            stop(backup, grace=0.2)
    if extra is not None:
        with open(plog, errors="replace") as f:
            lines = f.read().splitlines()
        net = [l for l in lines if l.startswith("network:")]
        whole = [l for l in lines if l.startswith("== protected run")]
        lastck = [l for l in lines if l.startswith("checkpoints:")]
        figures["network"] = net[-1] if net else None
        figures["hold_p50_ms"] = num(r"hold p50 ([\d.]+) ms", figures["network"])
        figures["hold_p99_ms"] = num(r"hold p50 [\d.]+ ms p99 ([\d.]+) ms", figures["network"])
        figures["stalls"] = num(r"(\d+) stalls", figures["network"])
        figures["checkpoints"] = lastck[-1] if lastck else None
        figures["whole_run"] = ckpt_figures(whole[-1] if whole else None)
        if any(l.startswith("UNPROTECTED") for l in lines):
            figures["error"] = next(l for l in lines if l.startswith("UNPROTECTED"))
    return rows, figures


def med(vals):
    vals = [v for v in vals if v is not None]
    return round(statistics.median(vals), 3) if vals else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round, a third of the requests, 3 configs (~40 s)")
    ap.add_argument("--build", default=os.path.join(REPO, "build"), help="build directory (default build/)")
    ap.add_argument("--rounds", type=int, help="rounds, configs alternating (3; --quick 1)")
    ap.add_argument("--scale", type=float, help="multiplies the request counts (1; --quick 0.35)")
    ap.add_argument("--requests", default="", help="fixed requests per run by clients, e.g. 1=500,50=10000")
    ap.add_argument("--clients", default="1,50")
    ap.add_argument("--tests", default="ping_mbulk,get,set", help="redis-benchmark -t (default ping_mbulk,get,set)")
    ap.add_argument("--configs", help="comma-separated, from: %s (default all; --quick without output-1ms)"
                    % ",".join(CONFIGS))
    ap.add_argument("--bench-timeout", type=float, default=120, help="s before a redis-benchmark run is killed")
    ap.add_argument("--machine", default="%s, %d cores" % (platform.node(), os.cpu_count()))
    ap.add_argument("--json", help="also write the JSON summary to this file")
    ap.add_argument("--latency-samples", help="also write per-request round trips to this file (TSV: config, round, "
                    "latency_ms): --latency-requests sequential PINGs on one connection per config and round")
    ap.add_argument("--latency-requests", type=int, default=500, help="requests for --latency-samples (500)")
    args = ap.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.scale = args.scale or (0.35 if args.quick else 1.0)
    args.clients = [int(c) for c in args.clients.split(",")]
    args.requests = {int(k): int(v) for k, v in (kv.split("=") for kv in args.requests.split(",") if kv)}
    args.understudy = os.path.join(args.build, "cli", "understudy")
    args.image = os.path.join(args.build, "guest", "kv.elf")
    for f in (args.understudy, args.image):
        if not os.path.exists(f):
            sys.exit("bench_net: %s missing (scripts/build.sh, or --build DIR)" % f)
    if os.geteuid() != 0:
        sys.exit("bench_net: needs root (network namespaces)")
    configs = (args.configs or ",".join(list(CONFIGS)[:3] if args.quick else CONFIGS)).split(",")
    if configs[0] != "unprotected" or not set(configs) <= set(CONFIGS):
        sys.exit("bench_net: --configs must start with unprotected and name only %s" % ",".join(CONFIGS))

    global topology
    atexit.register(cleanup)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    topology = "bn%d" % (os.getpid() % 100000000)
    workdir = tempfile.mkdtemp(prefix="bench_net-")
    subprocess.run([TOPO, "up", topology], check=True, stdout=subprocess.DEVNULL)
    log("bench_net: topology %s, logs in %s" % (topology, workdir))

    t_start, load_start = time.monotonic(), os.getloadavg()
    rows, figures, errors = [], [], []
    for rnd in range(args.rounds):
        order = configs[rnd % len(configs):] + configs[:rnd % len(configs)]
        for name in order:
            try:
                r, f = run_config(args, name, workdir, rnd)
                rows += r
                figures.append(f)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                errors.append("%s round %d: %s" % (name, rnd, e))
                log("  ERROR " + errors[-1])
    cleanup()
    elapsed = time.monotonic() - t_start

    # Medians over rounds.
    results = []
    keys = sorted({(r["config"], r["test"], r["clients"]) for r in rows},
                  key=lambda k: (configs.index(k[0]), k[1], k[2]))
    for cfg, test, clients in keys:
        rr = [r for r in rows if (r["config"], r["test"], r["clients"]) == (cfg, test, clients)]
        results.append({"config": cfg, "test": test, "clients": clients, "requests": rr[0]["requests"], "rounds": len(rr),
                        "rps": med(r["rps"] for r in rr), "p50_ms": med(r["p50_ms"] for r in rr),
                        "p99_ms": med(r["p99_ms"] for r in rr), "avg_ms": med(r["avg_ms"] for r in rr),
                        "rps_rounds": [r["rps"] for r in rr], "p50_ms_rounds": [r["p50_ms"] for r in rr]})

    def get(cfg, test, clients, field):
        for r in results:
            if (r["config"], r["test"], r["clients"]) == (cfg, test, clients):
                return r[field]
        return None

    primary = []
    for cfg in configs[1:]:
        ff = [f for f in figures if f["config"] == cfg]
        if not ff:
            continue
        p = {"config": cfg, "hold_p50_ms": med(f["hold_p50_ms"] for f in ff), "hold_p99_ms": med(f["hold_p99_ms"] for f in ff),
             "stalls": [f["stalls"] for f in ff], "last_network": ff[-1]["network"], "last_checkpoints": ff[-1]["checkpoints"],
             "errors": [f["error"] for f in ff if "error" in f]}
        for k in ("ckpt_per_s", "pause_p50_us", "pause_p99_us"):
            p["whole_run_" + k] = med(f["whole_run"][k] for f in ff)
            for c in args.clients:
                p["c%d_%s" % (c, k)] = med(f["during"].get(c, {}).get(k) for f in ff)
        primary.append(p)

    tests = sorted({r["test"] for r in results})
    targets, met = [], True
    for test in tests:
        a1, c1 = get("unprotected", test, 1, "p50_ms"), get("output-0ms", test, 1, "p50_ms")
        a50, b50, c50 = (get(cfg, test, 50, "rps") for cfg in ("unprotected", "fixed-25ms", "output-0ms"))
        added = round(c1 - a1, 3) if None not in (a1, c1) else None
        frac_c = round(c50 / a50, 3) if a50 and c50 is not None else None
        frac_b = round(b50 / a50, 3) if a50 and b50 is not None else None
        t = {"test": test, "added_p50_ms_1_client": added, "added_p50_met": added is not None and added <= TARGET_ADDED_P50_MS,
             "rps_fraction_50_clients_output_triggered": frac_c, "rps_fraction_50_clients_fixed_epoch": frac_b,
             "rps_fraction_met": frac_c is not None and frac_c >= TARGET_FRACTION}
        if "output-1ms" in configs:
            d1, d50 = get("output-1ms", test, 1, "p50_ms"), get("output-1ms", test, 50, "rps")
            t["added_p50_ms_1_client_gather1"] = round(d1 - a1, 3) if None not in (a1, d1) else None
            t["rps_fraction_50_clients_gather1"] = round(d50 / a50, 3) if a50 and d50 is not None else None
        met = met and t["added_p50_met"] and t["rps_fraction_met"]
        targets.append(t)

    # Human table.
    print("bench_net: kv guest, redis-benchmark from the client namespace; %d round(s), medians; %.0f s" % (args.rounds, elapsed))
    print("%-12s %-11s %7s %8s %10s %9s %9s" % ("config", "test", "clients", "requests", "req/s", "p50 ms", "p99 ms"))
    for r in results:
        print("%-12s %-11s %7d %8d %10.0f %9.3f %9.3f" % (r["config"], r["test"], r["clients"], r["requests"], r["rps"],
                                                         r["p50_ms"], r["p99_ms"]))
    print()
    print("primary (medians over rounds): hold = output held for the backup; ckpt/s, pause during c=1 / c=50 runs")
    for p in primary:
        print("%-12s hold p50 %s ms p99 %s ms | ckpt/s %s / %s | pause p50 %s / %s us, p99 %s / %s us" % (
            p["config"], p["hold_p50_ms"], p["hold_p99_ms"], p.get("c1_ckpt_per_s"), p.get("c50_ckpt_per_s"),
            p.get("c1_pause_p50_us"), p.get("c50_pause_p50_us"), p.get("c1_pause_p99_us"), p.get("c50_pause_p99_us")))
    print()
    for t in targets:
        print("%-11s added p50 (1 client, output-0ms) %s ms [target <= %.0f: %s]; 50-client rps output-0ms/unprotected %s "
              "[target >= %.1f: %s], fixed-25ms/unprotected %s" % (
                  t["test"], t["added_p50_ms_1_client"], TARGET_ADDED_P50_MS, "met" if t["added_p50_met"] else "MISSED",
                  t["rps_fraction_50_clients_output_triggered"], TARGET_FRACTION,
                  "met" if t["rps_fraction_met"] else "MISSED", t["rps_fraction_50_clients_fixed_epoch"]))
    for e in errors:
        print("ERROR: " + e)
    summary = {"benchmark": "bench_net", "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
               "machine": args.machine, "quick": args.quick, "rounds": args.rounds, "seconds": round(elapsed),
               "loadavg_1min_start_end": [load_start[0], os.getloadavg()[0]],
               "tests": args.tests, "clients": args.clients, "configs": {c: CONFIGS[c] for c in configs},
               "target_added_p50_ms": TARGET_ADDED_P50_MS, "target_rps_fraction": TARGET_FRACTION,
               "targets_met": met and not errors, "errors": errors, "targets": targets, "results": results,
               "primary": primary}
    summary.update(provenance())
    line = json.dumps(summary)
    if args.latency_samples:
        with open(args.latency_samples, "w") as f:
            f.write("config\tround\tlatency_ms\n")
            f.writelines("%s\t%d\t%.4f\n" % s for s in SAMPLES)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")
    print("JSON: " + line)
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
