#!/usr/bin/python3
"""report.py: runs the benchmarks and writes a Markdown report with gnuplot plots.

  bench/report.py --out DIR [--quick] [--build BUILD] [--only checkpoint,net,drill]
      runs bench_checkpoint, bench_net.py and drill.py (each writes its JSON summary and
      its per-sample data into DIR/data/), then writes the report
  bench/report.py --out DIR --from DATA
      writes the report from data recorded earlier (files as below; missing ones are
      reported as missing)

`understudy bench` runs this script. Data files (DIR/data/ or --from DATA):
  checkpoint.json, checkpoint_samples.tsv   bench_checkpoint --json, --samples= (one line per checkpoint)
  net.json, net_latency.tsv                 bench_net.py --json, --latency-samples (one line per request)
  drill.json                                drill.py --json
Output: DIR/report.md with tables, and DIR/pause_histogram.png, DIR/pause_size_over_time.png,
DIR/latency_cdf.png (gnuplot, pngcairo). Exit 0 when the report was written (a benchmark
that failed is reported in it), 2 on bad usage, 3 when gnuplot or the output failed.
Python 3 standard library only, plus the gnuplot binary (Debian gnuplot-nox).
"""
import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")


def log(msg):
    print("report: " + msg, file=sys.stderr, flush=True)


# ---- running the benchmarks ----
def run_benchmarks(args, data):
    os.makedirs(data, exist_ok=True)
    quick = ["--quick"] if args.quick else []
    jobs = {
        "checkpoint": [os.path.join(args.build, "bench", "bench_checkpoint")] + quick +
                      ["--json", os.path.join(data, "checkpoint.json"), "--samples=" + os.path.join(data, "checkpoint_samples.tsv")],
        "net": [sys.executable, os.path.join(BENCH, "bench_net.py")] + quick +
               ["--build", args.build, "--json", os.path.join(data, "net.json"),
                "--latency-samples", os.path.join(data, "net_latency.tsv")],
        "drill": [sys.executable, os.path.join(BENCH, "drill.py"), "all"] + quick +
                 ["--build", args.build, "--json", os.path.join(data, "drill.json")],
    }
    status = {}
    for name in args.only:
        argv = jobs[name]
        logpath = os.path.join(data, name + ".log")
        log("running %s (log %s)" % (" ".join(argv), logpath))
        t0 = time.monotonic()
        with open(logpath, "w") as lf:
            try:
                rc = subprocess.run(argv, stdout=lf, stderr=subprocess.STDOUT, timeout=args.timeout).returncode
            except FileNotFoundError as e:
                rc = "not found: %s" % e.filename
            except subprocess.TimeoutExpired:
                rc = "killed after %d s" % args.timeout
        status[name] = {"exit": rc, "seconds": round(time.monotonic() - t0, 1), "command": " ".join(argv)}
        log("%s: exit %s after %.0f s" % (name, rc, time.monotonic() - t0))
    with open(os.path.join(data, "status.json"), "w") as f:
        json.dump(status, f, indent=1)


# ---- reading ----
def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        log("%s: %s" % (path, e))
        return None


def load_tsv(path, types):
    try:
        with open(path, newline="") as f:
            rows = []
            for r in csv.DictReader(f, delimiter="\t"):
                rows.append({k: t(r[k]) for k, t in types.items()})
            return rows
    except (OSError, ValueError, KeyError, TypeError) as e:
        log("%s: %s" % (path, e))
        return None


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, math.ceil(p / 100 * len(sorted_vals)) - 1))
    return sorted_vals[i]


def f(v, digits=1):
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        return ("{:,.%df}" % digits).format(v)
    return str(v)


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


# ---- plots ----
def gnuplot(script, outdir):
    r = subprocess.run(["gnuplot"], input=script, text=True, cwd=outdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise RuntimeError("gnuplot: " + r.stderr.strip()[-500:])


def quote(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


HEAD = 'set terminal pngcairo noenhanced size 1000,600 font "DejaVu Sans,11"\nset grid\nset key inside right top\n'


def plot_pause_histogram(samples, outdir):
    """Checkpoint pause times, one histogram per churn row, log-spaced bins."""
    rows = [r for r in dict.fromkeys(s["row"] for s in samples) if r.endswith("pages")]
    pauses = {r: sorted(s["pause_us"] for s in samples if s["row"] == r) for r in rows}
    allp = [p for v in pauses.values() for p in v if p > 0]
    if not allp:
        return None
    lo, hi = math.log10(min(allp)), math.log10(max(allp)) + 1e-9
    nbins = 30
    edges = [10 ** (lo + (hi - lo) * i / nbins) for i in range(nbins + 1)]
    with open(os.path.join(outdir, "pause_histogram.dat"), "w") as out:
        for r in rows:
            out.write("# %s\n" % r)
            counts = [0] * nbins
            for p in pauses[r]:
                if p > 0:
                    counts[min(nbins - 1, int((math.log10(p) - lo) / (hi - lo) * nbins))] += 1
            for i in range(nbins):
                out.write("%g %d\n" % (math.sqrt(edges[i] * edges[i + 1]), counts[i]))
            out.write("\n\n")
    plots = ", ".join('"pause_histogram.dat" index %d using 1:2 with linespoints lw 2 lc %d title %s' %
                      (i, i + 1, quote("%s per epoch (%d checkpoints)" % (r, len(pauses[r])))) for i, r in enumerate(rows))
    gnuplot(HEAD + 'set output "pause_histogram.png"\n'
            'set title "Checkpoint pause time distribution\\n(bench_checkpoint, churn guest, %d log-spaced bins)"\n'
            'set logscale x\nset xlabel "pause: vCPUs stopped per checkpoint (µs, log scale)"\n'
            'set ylabel "checkpoints in bin (count)"\nset yrange [0:*]\n'
            'plot %s\n' % (nbins, plots), outdir)
    return "pause_histogram.png"


def plot_pause_size(samples, outdir):
    """Pause and checkpoint size over the measured window, churn rows."""
    rows = [r for r in dict.fromkeys(s["row"] for s in samples) if r.endswith("pages")]
    if not rows:
        return None
    with open(os.path.join(outdir, "pause_size.dat"), "w") as out:
        for r in rows:
            out.write("# %s: acked_s pause_us wire_kib raw_kib\n" % r)
            for s in samples:
                if s["row"] == r:
                    out.write("%.6f %.1f %.2f %.2f\n" % (s["acked_s"], s["pause_us"], s["wire_bytes"] / 1024,
                                                          s["raw_bytes"] / 1024))
            out.write("\n\n")
    top = ", ".join('"pause_size.dat" index %d using 1:2 with linespoints pt 7 ps 0.5 lc %d title %s' % (i, i + 1, quote(r + " per epoch"))
                    for i, r in enumerate(rows))
    bottom = ", ".join('"pause_size.dat" index %d using 1:3 with linespoints pt 7 ps 0.5 lc %d title %s, '
                       '"pause_size.dat" index %d using 1:4 with lines dt 2 lc %d title %s' %
                       (i, i + 1, quote(r + ": on the wire"), i, i + 1, quote(r + ": raw pages")) for i, r in enumerate(rows))
    gnuplot('set terminal pngcairo noenhanced size 1100,850 font "DejaVu Sans,11"\nset grid\nset key outside right top\n'
            'set output "pause_size_over_time.png"\nset multiplot layout 2,1 title '
            '"Checkpoint pause and size over time (bench_checkpoint, churn guest; x: time each checkpoint was acknowledged)"\n'
            'set title "Pause per checkpoint"\nset xlabel "time in the measured window (s)"\n'
            'set ylabel "pause (µs, log scale)"\nset logscale y\nplot %s\n'
            'unset logscale y\nset title "Checkpoint size"\nset xlabel "time in the measured window (s)"\n'
            'set ylabel "size (KiB, log scale)"\nset logscale y\nplot %s\nunset multiplot\n' % (top, bottom), outdir)
    return "pause_size_over_time.png"


def plot_latency_cdf(lat, outdir):
    configs = list(dict.fromkeys(s["config"] for s in lat))
    if not configs:
        return None
    with open(os.path.join(outdir, "latency_cdf.dat"), "w") as out:
        for c in configs:
            v = sorted(s["latency_ms"] for s in lat if s["config"] == c)
            out.write("# %s\n" % c)
            for i, x in enumerate(v):
                out.write("%.4f %.6f\n" % (x, (i + 1) / len(v)))
            out.write("\n\n")
    def label(c):
        n = sum(1 for s in lat if s["config"] == c)
        return "%s (%d requests)" % (c, n) if c == "unprotected" else "%s (protected, %d requests)" % (c, n)
    plots = ", ".join('"latency_cdf.dat" index %d using 1:2 with steps lw 2 title %s' % (i, quote(label(c)))
                      for i, c in enumerate(configs))
    gnuplot(HEAD + 'set output "latency_cdf.png"\n'
            'set title "Request latency CDF, protected vs unprotected (bench_net.py: kv guest, sequential PINGs, one connection)"\n'
            'set logscale x\nset xlabel "request round trip (ms, log scale)"\n'
            'set ylabel "fraction of requests at or below (CDF)"\nset yrange [0:1]\nset key bottom right inside\n'
            'plot %s\n' % plots, outdir)
    return "latency_cdf.png"


# ---- the report ----
def section_checkpoint(ck, samples, plots):
    md = ["## Checkpoints (bench_checkpoint)\n"]
    if not ck:
        return md + ["No data: checkpoint.json is missing or unreadable (see data/checkpoint.log).\n"]
    md.append("%s, %s MiB guest, %s vCPU(s)%s; %s s measured per row. Pause = the vCPUs' stop per checkpoint; "
              "sizes per checkpoint.\n" % (ck.get("date"), ck.get("memory_mib"), ck.get("vcpus"),
                                           " (--quick)" if ck.get("quick") else "", ck.get("window_s")))
    rows = []
    for r in ck.get("rows", []):
        p = r.get("pause_us") or {}
        n = r.get("checkpoints") or 0
        rows.append((r.get("name"), f(r.get("epoch_ms"), 0), f(n, 0), f(r.get("checkpoints_per_s")), f(p.get("p50")),
                     f(p.get("p99")), f(p.get("max")), f((r.get("raw_bytes") or 0) / n / 1024 if n else None),
                     f((r.get("wire_bytes") or 0) / n / 1024 if n else None), f(r.get("wire_over_raw"), 3),
                     r.get("error") or ""))
    md.append(table(["row", "epoch (ms)", "checkpoints", "per s", "pause p50 (µs)", "p99 (µs)", "max (µs)",
                     "raw / ckpt (KiB)", "wire / ckpt (KiB)", "wire/raw", "error"], rows))
    md.append("\nTargets met: %s.\n" % f(ck.get("targets_met")))
    if samples is None:
        md.append("\nNo per-checkpoint samples (checkpoint_samples.tsv): no plots.\n")
    for name, what in (("pause_histogram.png", "Pause time histogram"), ("pause_size_over_time.png", "Pause and size over time")):
        if name in plots:
            md.append("\n### %s\n\n![%s](%s)\n" % (what, what, name))
    return md


def section_net(net, lat, plots):
    md = ["## Request latency (bench_net.py)\n"]
    if not net:
        md.append("No redis-benchmark data: net.json is missing or unreadable (see data/net.log).\n")
    else:
        md.append("%s, %s round(s), medians over rounds; kv guest, redis-benchmark from the client namespace.\n" %
                  (net.get("date"), net.get("rounds")))
        rows = [(r["config"], r["test"], r["clients"], f(r.get("rps"), 0), f(r.get("p50_ms"), 3), f(r.get("p99_ms"), 3))
                for r in net.get("results", [])]
        md.append(table(["config", "test", "clients", "requests/s", "p50 (ms)", "p99 (ms)"], rows))
        if net.get("errors"):
            md.append("\nErrors: " + "; ".join(net["errors"]) + "\n")
    if lat:
        md.append("\nPer-request round trips (sequential PINGs on one connection, %s):\n\n" % "net_latency.tsv")
        rows = []
        for c in dict.fromkeys(s["config"] for s in lat):
            v = sorted(s["latency_ms"] for s in lat if s["config"] == c)
            rows.append((c, len(v), f(pct(v, 50), 3), f(pct(v, 90), 3), f(pct(v, 99), 3), f(v[-1], 3)))
        md.append(table(["config", "requests", "p50 (ms)", "p90 (ms)", "p99 (ms)", "max (ms)"], rows))
    else:
        md.append("\nNo per-request samples (net_latency.tsv): no CDF.\n")
    if "latency_cdf.png" in plots:
        md.append("\n### Latency CDF\n\n![Request latency CDF](latency_cdf.png)\n")
    return md


def section_drill(dr):
    md = ["## Failover drills (drill.py)\n"]
    if not dr:
        return md + ["No data: drill.json is missing or unreadable (see data/drill.log).\n"]
    md.append("%s, %s; %s s.\n" % (dr.get("date"), "quick" if dr.get("quick") else "full", dr.get("seconds")))
    rows = []
    for s in dr.get("kinds", []):
        g = lambda k, q: f((s.get(k) or {}).get(q))
        rows.append((s.get("kind"), s.get("runs"), s.get("failed_runs"), g("detection_ms", "p50"), g("detection_ms", "p99"),
                     g("promotion_ms", "p50"), g("promotion_ms", "p99"), g("outage_ms", "p50"), g("outage_ms", "p99"),
                     s.get("acked_writes"), s.get("lost_acked_writes")))
    md.append(table(["kind", "runs", "failed", "detection p50 (ms)", "p99", "promotion p50 (ms)", "p99", "outage p50 (ms)",
                     "p99", "acked writes", "lost"], rows))
    return md


def write_report(args, data):
    os.makedirs(args.out, exist_ok=True)
    ck = load_json(os.path.join(data, "checkpoint.json"))
    samples = load_tsv(os.path.join(data, "checkpoint_samples.tsv"),
                       {"row": str, "epoch": int, "acked_s": float, "pause_us": float, "dirty_pages": int,
                        "raw_bytes": int, "wire_bytes": int})
    net = load_json(os.path.join(data, "net.json"))
    lat = load_tsv(os.path.join(data, "net_latency.tsv"), {"config": str, "round": int, "latency_ms": float})
    dr = load_json(os.path.join(data, "drill.json"))
    status = load_json(os.path.join(data, "status.json")) if os.path.exists(os.path.join(data, "status.json")) else None
    plots = set()
    for fn, d in ((plot_pause_histogram, samples), (plot_pause_size, samples), (plot_latency_cdf, lat)):
        if d:
            name = fn(d, args.out)
            if name:
                plots.add(name)
    md = ["# Understudy benchmark report\n",
          "Generated %s by bench/report.py from %s.\n" % (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                                          "a run just made" if not args.from_dir else "recorded data in " + data)]
    if status:
        md.append(table(["benchmark", "exit", "seconds", "command"],
                        [(k, v["exit"], v["seconds"], "`%s`" % v["command"]) for k, v in status.items()]))
    md.append("")
    md += section_checkpoint(ck, samples, plots) + [""] + section_net(net, lat, plots) + [""] + section_drill(dr)
    with open(os.path.join(args.out, "report.md"), "w") as out:
        out.write("\n".join(md))
    log("wrote %s (plots: %s)" % (os.path.join(args.out, "report.md"), ", ".join(sorted(plots)) or "none"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="directory for report.md and the plots")
    ap.add_argument("--from", dest="from_dir", help="make the report from the data files in this directory; run nothing")
    ap.add_argument("--quick", action="store_true", help="the benchmarks' --quick runs (a few minutes in all)")
    ap.add_argument("--build", default=os.path.join(REPO, "build"), help="build directory (default build/)")
    ap.add_argument("--only", default="checkpoint,net,drill", help="benchmarks to run (default all three)")
    ap.add_argument("--timeout", type=int, default=3600, help="s before a benchmark is killed (default 3600)")
    args = ap.parse_args()
    args.only = [x for x in args.only.split(",") if x]
    if any(x not in ("checkpoint", "net", "drill") for x in args.only):
        ap.error("--only: checkpoint, net, drill")
    if not shutil.which("gnuplot"):
        log("gnuplot not found (Debian: gnuplot-nox)")
        return 3
    if args.from_dir:
        data = args.from_dir
        if not os.path.isdir(data):
            ap.error("--from %s: not a directory" % data)
    else:
        data = os.path.join(args.out, "data")
        run_benchmarks(args, data)
    try:
        write_report(args, data)
    except (OSError, RuntimeError) as e:
        log(str(e))
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
