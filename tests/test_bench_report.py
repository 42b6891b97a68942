#!/usr/bin/python3
"""ctest bench_report: `understudy bench --from DATA` writes report.md and valid PNG plots.

Uses the recorded data in bench/sample-data/ (the real benchmarks need root, /dev/kvm,
network namespaces and minutes). Checks the Markdown (sections, tables with the recorded
rows, links to the plots) and each PNG (signature, chunk CRCs, IHDR size, IEND); then that
an empty data directory still gives a report that says what is missing, and no plots.
usage: test_bench_report.py UNDERSTUDY SAMPLE_DATA_DIR. Exit 77 (skipped) without gnuplot.
"""
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def check_png(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        fail("%s: not a PNG signature" % path)
    pos, chunks = 8, []
    while pos < len(data):
        if pos + 12 > len(data):
            fail("%s: truncated chunk at %d" % (path, pos))
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(ctype + body) != crc:
            fail("%s: bad CRC in chunk %s" % (path, ctype))
        chunks.append((ctype, body))
        pos += 12 + length
    if chunks[0][0] != b"IHDR" or chunks[-1][0] != b"IEND":
        fail("%s: chunks %s" % (path, [c[0] for c in chunks]))
    w, h = struct.unpack(">II", chunks[0][1][:8])
    if w < 600 or h < 400:
        fail("%s: %dx%d is too small to read" % (path, w, h))
    idat = b"".join(b for t, b in chunks if t == b"IDAT")
    if len(zlib.decompress(idat)) < w * h:  # at least a byte a pixel: a real image
        fail("%s: image data too short" % path)
    return w, h


def bench(cli, out, data, want=0):
    r = subprocess.run([cli, "bench", "--out", out, "--from", data], capture_output=True, text=True, timeout=120)
    if r.returncode != want:
        fail("understudy bench --from %s exited %d, not %d: %s" % (data, r.returncode, want, r.stderr[-800:]))
    if want == 0:
        with open(os.path.join(out, "report.md")) as f:
            return f.read()
    return None


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    cli, sample = sys.argv[1], sys.argv[2]
    if not shutil.which("gnuplot"):
        print("gnuplot not found: skipped")
        return 77
    tmp = tempfile.mkdtemp(prefix="us-bench-report-")
    try:
        out = os.path.join(tmp, "report")
        md = bench(cli, out, sample)
        for needle in ("# Understudy benchmark report", "## Checkpoints (bench_checkpoint)",
                       "## Request latency (bench_net.py)", "## Failover drills (drill.py)",
                       "| 1000 pages | 25 |", "| unprotected | GET | 1 |", "| output-0ms |", "| kill-primary | 1 |",
                       "![Pause time histogram](pause_histogram.png)",
                       "![Pause and size over time](pause_size_over_time.png)",
                       "![Request latency CDF](latency_cdf.png)"):
            if needle not in md:
                fail("report.md lacks %r" % needle)
        for png in ("pause_histogram.png", "pause_size_over_time.png", "latency_cdf.png"):
            w, h = check_png(os.path.join(out, png))
            print("%s: %dx%d ok" % (png, w, h))
        # No data at all: still a report, saying what is missing, and no plots.
        empty = os.path.join(tmp, "empty")
        os.mkdir(empty)
        out2 = os.path.join(tmp, "report2")
        md2 = bench(cli, out2, empty)
        if md2.count("No data") < 2 or "No per-request samples" not in md2:
            fail("empty report does not say what is missing:\n" + md2)
        if any(n.endswith(".png") for n in os.listdir(out2)):
            fail("plots made from no data")
        # A missing data directory is bad usage.
        bench(cli, out2, os.path.join(tmp, "nope"), want=2)
    finally:
        shutil.rmtree(tmp)
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
