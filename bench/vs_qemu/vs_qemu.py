#!/usr/bin/python3
"""bench/vs_qemu: Understudy's checkpoint pauses next to QEMU/KVM live migration (and COLO),
same machine, same churn image, same dirty rate, in one run, the two systems alternating.

For each dirty rate (pages/s, total over the guest's vCPUs; one vCPU up to --max-vcpu-rate, two
above it, the same on both systems: the guest runtime starts QEMU's APs with INIT-SIPI-SIPI):
  QEMU   live migration between two local QEMU 7.2 processes over 127.0.0.1 (microvm, PVH
         boot of churn.elf), repeated --repeats times with QEMU's default settings and again
         with the auto-converge capability; each run is bounded by --timeout seconds, then
         migrate_cancel and "did not converge". Figures from QMP query-migrate.
  Understudy  the same image and churn keys protected by bench_checkpoint's custom row
         (Primary + BackupServer over 127.0.0.1) at 25 ms and at 5 ms epochs for
         --seconds seconds: every checkpoint's pause, bytes on the wire per second, whether
         protection kept up.
Then a table (Markdown), a JSON summary and a PNG plot of both distributions.

Only loopback and unix sockets are used. Every QEMU started is killed, also on errors.
Standard library only, except matplotlib for the plot (bench/vs_qemu/install-deps.sh).
"""
import argparse
import atexit
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from provenance import provenance  # noqa: E402 (bench/provenance.py)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PAGE = 4096

QEMU = "qemu-system-x86_64"
# Checked to boot a PVH ELF here (-cpu host fails on an MSR on the PVM backend).
QEMU_MACHINE = ["-M", "microvm,x-option-roms=off,rtc=off", "-accel", "kvm", "-cpu", "qemu64"]

_children = []  # every process we started; killed at exit whatever happens


def _kill_all():
    for p in _children:
        if p.poll() is None:
            try:
                p.kill()
            except OSError:
                pass
    for p in _children:
        try:
            p.wait(timeout=5)
        except Exception:
            pass


atexit.register(_kill_all)


def _on_signal(signum, _frame):
    _kill_all()
    sys.exit(128 + signum)


signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGINT, _on_signal)
signal.signal(signal.SIGHUP, _on_signal)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def spawn(argv, **kw):
    p = subprocess.Popen(argv, **kw)
    _children.append(p)
    return p


def stop(p, grace=1.0):
    if p is None or p.poll() is not None:
        return
    p.terminate()
    try:
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=5)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, p):
    """Nearest-rank percentile (as bench_common.hpp's summarize())."""
    if not values:
        return None
    v = sorted(values)
    r = max(1, min(len(v), -(-len(v) * p // 100)))
    return v[int(r) - 1]


class Qmp:
    """A QMP client over a unix socket: one command at a time, events kept aside."""

    def __init__(self, path, deadline_s=10.0):
        end = time.monotonic() + deadline_s
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > end:
                    raise RuntimeError("QMP socket %s did not come up" % path)
                time.sleep(0.02)
        self.sock.settimeout(15)
        self.f = self.sock.makefile("rw")
        self.events = []
        greeting = json.loads(self.f.readline())
        if "QMP" not in greeting:
            raise RuntimeError("not a QMP greeting: %r" % greeting)
        self.cmd("qmp_capabilities")

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg) + "\n")
        self.f.flush()
        while True:
            line = self.f.readline()
            if not line:
                raise RuntimeError("QMP connection closed during %s" % name)
            r = json.loads(line)
            if "event" in r:
                self.events.append(r)
                continue
            if "error" in r:
                raise RuntimeError("QMP %s: %s" % (name, r["error"].get("desc", r["error"])))
            return r.get("return")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


CHURN_LINE = re.compile(r"churn: vcpu (\d+) iteration (\d+) \((\d+) pages/s\)")


def churn_rates(text):
    """Per-second rates churn printed, summed over vCPUs line by line (one list per vCPU)."""
    per = {}
    for m in CHURN_LINE.finditer(text):
        per.setdefault(int(m.group(1)), []).append(int(m.group(3)))
    return per


def read_from(path, offset=0):
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


class QemuVm:
    def __init__(self, workdir, name, image, cmdline, mib, vcpus, incoming_port=None, extra=()):
        self.name = name
        self.qmp_path = os.path.join(workdir, name + ".qmp")
        self.console = os.path.join(workdir, name + ".console")
        argv = [QEMU, *QEMU_MACHINE, "-m", "%dM" % mib, "-smp", str(vcpus), "-display", "none",
                "-no-reboot", "-nodefaults", "-serial", "file:" + self.console,
                "-kernel", image, "-append", cmdline,
                "-qmp", "unix:%s,server=on,wait=off" % self.qmp_path, *extra]
        if incoming_port is not None:
            argv += ["-incoming", "tcp:127.0.0.1:%d" % incoming_port]
        self.stderr_path = os.path.join(workdir, name + ".stderr")
        self.proc = spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=open(self.stderr_path, "wb"))
        self.qmp = Qmp(self.qmp_path)

    def stderr_text(self):
        return "\n".join(l for l in read_from(self.stderr_path).splitlines()
                         if "host doesn't support requested feature" not in l)

    def close(self):
        try:
            self.qmp.cmd("quit")
        except Exception:
            pass
        self.qmp.close()
        stop(self.proc)


def wait_console(vm, pattern, timeout_s, offset=0):
    end = time.monotonic() + timeout_s
    rx = re.compile(pattern)
    while time.monotonic() < end:
        if rx.search(read_from(vm.console, offset)):
            return True
        if vm.proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def qemu_migration(image, cmdline, mib, vcpus, auto_converge, timeout_s, warmup_s):
    """One live migration source -> destination over 127.0.0.1; returns its figures."""
    work = tempfile.mkdtemp(prefix="vsq-", dir="/tmp")
    res = {"variant": "auto-converge" if auto_converge else "default", "converged": False}
    src = dst = None
    try:
        port = free_port()
        dst = QemuVm(work, "dst", image, cmdline, mib, vcpus, incoming_port=port)
        src = QemuVm(work, "src", image, cmdline, mib, vcpus)
        if not wait_console(src, r"churn: vcpu 0 iteration", 20):
            raise RuntimeError("churn did not start under QEMU:\n" + read_from(src.console) + src.stderr_text())
        time.sleep(warmup_s)
        res["parameters"] = {k: v for k, v in src.qmp.cmd("query-migrate-parameters").items()
                             if k in ("max-bandwidth", "downtime-limit", "cpu-throttle-initial",
                                      "cpu-throttle-increment", "max-cpu-throttle")}
        caps = [{"capability": "auto-converge", "state": bool(auto_converge)}]
        src.qmp.cmd("migrate-set-capabilities", capabilities=caps)
        before = os.path.getsize(src.console)
        res["guest_rate_before"] = rates_summary(churn_rates(read_from(src.console)))
        t0 = time.monotonic()
        src.qmp.cmd("migrate", uri="tcp:127.0.0.1:%d" % port)
        samples = []
        status = None
        info = {}
        last_ram = {}
        while True:
            time.sleep(0.1)
            info = src.qmp.cmd("query-migrate")
            status = info.get("status")
            ram = info.get("ram", {})
            if ram:
                last_ram = ram
            samples.append({"t": round(time.monotonic() - t0, 2),
                            "dirty_pages_rate": ram.get("dirty-pages-rate"),
                            "remaining": ram.get("remaining"),
                            "throttle": info.get("cpu-throttle-percentage", 0)})
            if status in ("completed", "failed", "cancelled"):
                break
            if time.monotonic() - t0 > timeout_s:
                src.qmp.cmd("migrate_cancel")
                end = time.monotonic() + 10
                while time.monotonic() < end:
                    info = src.qmp.cmd("query-migrate")
                    if info.get("status") in ("cancelled", "failed", "completed"):
                        break
                    time.sleep(0.05)
                status = info.get("status")
                res["cancelled_after_s"] = round(time.monotonic() - t0, 2)
                break
        wall = time.monotonic() - t0
        ram = info.get("ram") or last_ram
        res.update({
            "status": status,
            "converged": status == "completed",
            "wall_s": round(wall, 3),
            "total_time_ms": info.get("total-time"),
            "downtime_ms": info.get("downtime") if status == "completed" else None,
            "setup_time_ms": info.get("setup-time"),
            "ram_transferred_bytes": ram.get("transferred"),
            "ram_total_bytes": ram.get("total"),
            "ram_duplicate_pages": ram.get("duplicate"),
            "ram_normal_pages": ram.get("normal"),
            "dirty_sync_count": ram.get("dirty-sync-count"),
            "mbps": ram.get("mbps"),
            "max_cpu_throttle_pct": max((s["throttle"] or 0) for s in samples) if samples else 0,
            "qemu_dirty_pages_rate_p50": pct([s["dirty_pages_rate"] for s in samples
                                              if s["dirty_pages_rate"]], 50),
        })
        # what churn achieved while the migration ran (source console), and that it runs on
        # the destination afterwards
        res["guest_rate_during"] = rates_summary(churn_rates(read_from(src.console, before)))
        if status == "completed":
            dst_off = 0
            res["guest_runs_on_destination"] = wait_console(dst, r"churn: vcpu 0 iteration", 3, dst_off)
        return res
    except Exception as e:
        res["error"] = str(e)
        return res
    finally:
        for vm in (src, dst):
            if vm is not None:
                vm.close()
        shutil.rmtree(work, ignore_errors=True)


def rates_summary(per_vcpu):
    """Total pages/s: the median over seconds of the sum over vCPUs (seconds aligned by index)."""
    if not per_vcpu:
        return None
    n = min(len(v) for v in per_vcpu.values())
    if n == 0:
        return None
    totals = [sum(v[i] for v in per_vcpu.values()) for i in range(n)]
    return int(statistics.median(totals))


def understudy_protect(bench, image, cmdline, mib, vcpus, epoch_ms, seconds, rate_asked):
    """bench_checkpoint's custom row: the guest protected for `seconds` at `epoch_ms`."""
    res = {"epoch_ms": epoch_ms, "vcpus": vcpus, "churn": cmdline}
    with tempfile.NamedTemporaryFile(prefix="vsq-u-", suffix=".json", dir="/tmp", delete=False) as tf:
        jpath = tf.name
    argv = [bench, "--churn=" + cmdline, "--vcpus=%d" % vcpus, "--epoch-ms=%d" % epoch_ms,
            "--seconds=%g" % seconds, "--mib=%d" % mib, "--image=" + image, "--json", jpath]
    try:
        p = spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = p.communicate(timeout=seconds + 150)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            res["error"] = "bench_checkpoint did not finish in time"
            return res
        try:
            with open(jpath) as f:
                j = json.load(f)
        except (OSError, ValueError):
            res["error"] = "bench_checkpoint exited %d without JSON: %s" % (
                p.returncode, err.decode(errors="replace")[-2000:])
            return res
    finally:
        try:
            os.unlink(jpath)
        except OSError:
            pass
    if not j.get("rows"):
        # bench_checkpoint emits no row when no checkpoint was acknowledged in the window
        res.update({"error": "no checkpoint acknowledged in the %g s window" % seconds, "checkpoints": 0,
                    "checkpoints_per_s": 0, "nominal_checkpoints_per_s": 1000.0 / epoch_ms, "kept_up": False,
                    "pauses_us": [], "pause_us": None})
        return res
    row = j["rows"][0]
    pauses = row.get("pauses_us", [])
    n = len(pauses)
    nominal = 1000.0 / epoch_ms
    cps = row.get("checkpoints_per_s", 0)
    res.update({
        "error": row.get("error", ""),
        "checkpoints": n,
        "window_s": row.get("window_s"),
        "checkpoints_per_s": cps,
        "nominal_checkpoints_per_s": nominal,
        "pause_us": row.get("pause_us"),
        "pause_excluding_stop_us": row.get("pause_excluding_stop_us"),
        "ack_us": row.get("ack_us"),
        "dirty_pages_p50": row.get("dirty_pages_p50"),
        "wire_mb_per_s": row.get("wire_mb_per_s"),
        "raw_mb_per_s": row.get("raw_mb_per_s"),
        "wire_bytes_per_s": (row.get("wire_bytes", 0) / row["window_s"]) if row.get("window_s") else None,
        "guest_pages_per_s": row.get("guest_pages_per_s"),
        "sync_to_protected_ms": row.get("sync_to_protected_ms"),
        "sync_pause_ms": row.get("sync_pause_ms"),
        "pauses_us": pauses,
    })
    # Kept up: no replication error, and checkpoints came at >= 80% of the epoch rate (with
    # at most 3 checkpoints unacknowledged, a backup that falls behind stretches epochs).
    res["kept_up"] = (not res["error"]) and n > 0 and cps >= 0.8 * nominal
    res["guest_rate_over_asked"] = (row.get("guest_pages_per_s") or 0) / rate_asked
    return res


def colo_run(image, cmdline, mib, vcpus, delay_ms, seconds, setup_timeout_s=40):
    """QEMU COLO (x-colo) between two local QEMUs on 127.0.0.1: the primary checkpoints every
    x-checkpoint-delay ms (there is no NIC, so no colo-compare miscompare triggers more).
    Each checkpoint stops the primary VM; its pause is the time from the QMP STOP event to
    the RESUME event (QEMU's own timestamps, microseconds). No disk and no NIC on microvm,
    so no block replication and no colo-compare are needed to bring it up."""
    work = tempfile.mkdtemp(prefix="vsq-colo-", dir="/tmp")
    out = {"delay_ms": delay_ms, "worked": False}
    src = dst = None
    try:
        port = free_port()
        dst = QemuVm(work, "colo-dst", image, cmdline, mib, vcpus, incoming_port=port)
        src = QemuVm(work, "colo-src", image, cmdline, mib, vcpus)
        if not wait_console(src, r"churn: vcpu 0 iteration", 20):
            raise RuntimeError("churn did not start under QEMU")
        for vm in (src, dst):
            vm.qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "x-colo", "state": True}])
        src.qmp.cmd("migrate-set-parameters", **{"x-checkpoint-delay": delay_ms})
        src.qmp.cmd("migrate", uri="tcp:127.0.0.1:%d" % port)
        t0 = time.monotonic()
        st = None
        while time.monotonic() - t0 < setup_timeout_s:
            st = src.qmp.cmd("query-migrate").get("status")
            if st in ("colo", "failed", "cancelled", "completed"):
                break
            time.sleep(0.05)
        out["reached_colo_after_s"] = round(time.monotonic() - t0, 2)
        if st != "colo":
            raise RuntimeError("status %s, not colo, after %.0f s" % (st, time.monotonic() - t0))
        before = os.path.getsize(src.console)
        time.sleep(1.0)  # the first checkpoints after entering COLO (one is ~1 s) are left out
        src.qmp.cmd("query-status")
        src.qmp.events.clear()
        t1 = time.monotonic()
        while time.monotonic() - t1 < seconds:
            src.qmp.cmd("query-status")  # collects the events that arrived meanwhile
            time.sleep(0.2)
        window = time.monotonic() - t1
        final = src.qmp.cmd("query-migrate")
        out["status_at_end"] = final.get("status")
        out["colo_status"] = src.qmp.cmd("query-colo-status")
        stop_ts = None
        pauses = []
        for e in src.qmp.events:
            ts = e["timestamp"]["seconds"] + e["timestamp"]["microseconds"] / 1e6
            if e["event"] == "STOP":
                stop_ts = ts
            elif e["event"] == "RESUME" and stop_ts is not None:
                pauses.append((ts - stop_ts) * 1e6)
                stop_ts = None
        out["window_s"] = round(window, 2)
        out["checkpoints"] = len(pauses)
        out["checkpoints_per_s"] = len(pauses) / window
        out["pauses_us"] = [round(p, 1) for p in pauses]
        out["pause_us"] = {"p50": pct(pauses, 50), "p99": pct(pauses, 99), "max": max(pauses) if pauses else None}
        out["guest_rate_during"] = rates_summary(churn_rates(read_from(src.console, before)))
        out["worked"] = out["status_at_end"] == "colo" and len(pauses) > 0
    except Exception as e:
        out["error"] = str(e)
    finally:
        for vm in (src, dst):
            if vm is not None:
                err = vm.stderr_text().strip()
                if err:
                    out.setdefault("stderr", {})[vm.name] = err[-600:]
                vm.close()
        shutil.rmtree(work, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------
# summaries, table, plot


def ms(us):
    return None if us is None else us / 1000.0


def fmt(x, nd=1):
    if x is None:
        return "–"
    if isinstance(x, float) and x >= 100:
        return "%.0f" % x
    return ("%." + str(nd) + "f") % x


def ratio_fmt(x):
    return "%.0f" % x if x >= 10 else ("%.1f" % x if x >= 1 else "%.2g" % x)


def summarize_qemu(runs):
    conv = [r for r in runs if r.get("converged")]
    down = [r["downtime_ms"] for r in conv if r.get("downtime_ms") is not None]
    tot = [r["total_time_ms"] for r in conv if r.get("total_time_ms") is not None]
    byt = [r["ram_transferred_bytes"] for r in runs if r.get("ram_transferred_bytes")]
    # churn prints its rate once a second: a migration shorter than that has no line of its
    # own, so the rate of the seconds before it stands in
    during = [r.get("guest_rate_during") or r.get("guest_rate_before") for r in runs
              if r.get("guest_rate_during") or r.get("guest_rate_before")]
    qrate = [r["qemu_dirty_pages_rate_p50"] for r in runs if r.get("qemu_dirty_pages_rate_p50")]
    return {
        "runs": len(runs),
        "converged": len(conv),
        "errors": [r["error"] for r in runs if r.get("error")],
        "downtime_ms": {"p50": pct(down, 50), "max": max(down) if down else None, "min": min(down) if down else None,
                        "all": down},
        "total_time_ms_p50": pct(tot, 50),
        "ram_transferred_bytes_p50": pct(byt, 50),
        "guest_pages_per_s_during_p50": pct(during, 50),
        "qemu_dirty_pages_rate_p50": pct(qrate, 50),
        "max_cpu_throttle_pct": max((r.get("max_cpu_throttle_pct") or 0) for r in runs) if runs else 0,
    }


def build_summary(results, args, meta):
    rates = []
    all_ratios_met = True
    protect_met = True
    for rate in args.rates:
        rr = results[rate]
        q = {v: summarize_qemu(rr["qemu"][v]) for v in ("default", "auto-converge")}
        u = {}
        for e, r in rr["understudy"].items():
            u[str(e)] = {k: v for k, v in r.items() if k != "pauses_us"}
        entry = {"rate_pages_per_s": rate, "qemu": q, "understudy": u,
                 "qemu_cmdline": rr["qemu_cmdline"], "understudy_cmdline": rr["understudy_cmdline"],
                 "understudy_vcpus": rr["understudy_vcpus"], "qemu_vcpus": rr.get("qemu_vcpus", 1)}
        if rr.get("colo") is not None:
            entry["colo"] = {k: v for k, v in rr["colo"].items() if k != "pauses_us"}
        ratios = {}
        for e, r in rr["understudy"].items():
            p99 = (r.get("pause_us") or {}).get("p99")
            for v in ("default", "auto-converge"):
                d = q[v]["downtime_ms"]
                key = "%s_over_understudy_%dms_p99" % (v.replace("-", "_"), e)
                if p99 and d["p50"] is not None:
                    ratios[key] = {"downtime_p50": d["p50"] / ms(p99), "downtime_max": d["max"] / ms(p99)}
                else:
                    ratios[key] = None
        entry["ratios"] = ratios
        # Target 1: p99 pause >= 10x shorter than QEMU's downtime (p50 over its converged
        # runs), at every epoch, wherever a QEMU variant converged.
        judged = [x["downtime_p50"] for x in ratios.values() if x]
        entry["pause_target_met"] = all(x >= 10 for x in judged) if judged else None
        if judged and not entry["pause_target_met"]:
            all_ratios_met = False
        # Target 2: where QEMU's default migration does not converge, Understudy keeps up.
        qemu_fails = q["default"]["converged"] < q["default"]["runs"]
        entry["qemu_default_failed_to_converge"] = qemu_fails
        entry["understudy_kept_up"] = all(r.get("kept_up") for r in rr["understudy"].values())
        if qemu_fails and not entry["understudy_kept_up"]:
            protect_met = False
        rates.append(entry)
    nonconv = [e["rate_pages_per_s"] for e in rates if e["qemu_default_failed_to_converge"]]
    return {
        "benchmark": "vs_qemu",
        **meta,
        "targets": {
            "pause_p99_10x_shorter_than_qemu_downtime": all_ratios_met,
            "understudy_protects_where_qemu_does_not_converge": (protect_met if nonconv else None),
            "rates_where_qemu_default_did_not_converge": nonconv,
        },
        "rates": rates,
    }


def table_md(summary, results):
    L = []
    L.append("| dirty rate asked | system | guest | runs | converged / kept up | downtime or pause p50 / p99 / max (ms) "
             "| total time p50 (s) | bytes | dirty pages/s achieved |")
    L.append("| ---: | --- | --- | ---: | --- | --- | ---: | --- | ---: |")
    for e in summary["rates"]:
        rate = e["rate_pages_per_s"]
        for v in ("default", "auto-converge"):
            q = e["qemu"][v]
            d = q["downtime_ms"]
            thr = " (throttle up to %d%%)" % q["max_cpu_throttle_pct"] if q["max_cpu_throttle_pct"] else ""
            L.append("| %s | QEMU migration, %s%s | %d vCPU `%s` | %d | %d of %d | %s / – / %s | %s | %s MiB transferred | %s |" % (
                "{:,}".format(rate), v, thr, e["qemu_vcpus"], e["qemu_cmdline"], q["runs"], q["converged"], q["runs"],
                fmt(d["p50"], 0), fmt(d["max"], 0),
                fmt(q["total_time_ms_p50"] / 1000.0) if q["total_time_ms_p50"] else "–",
                fmt(q["ram_transferred_bytes_p50"] / 2**20, 0) if q["ram_transferred_bytes_p50"] else "–",
                "{:,}".format(q["guest_pages_per_s_during_p50"]) if q["guest_pages_per_s_during_p50"] else "–"))
        c = e.get("colo")
        if c is not None:
            if c.get("worked"):
                p = c["pause_us"]
                L.append("| %s | QEMU COLO, checkpoint every %d ms | %d vCPU `%s` | 1 | %.1f ckpt/s for %.0f s | %s / %s / %s | – | – | %s |" % (
                    "{:,}".format(rate), c["delay_ms"], e["qemu_vcpus"], e["qemu_cmdline"], c["checkpoints_per_s"], c["window_s"],
                    fmt(ms(p["p50"])), fmt(ms(p["p99"])), fmt(ms(p["max"])),
                    "{:,}".format(c["guest_rate_during"]) if c.get("guest_rate_during") else "–"))
            else:
                L.append("| %s | QEMU COLO | %d vCPU | 1 | failed: %s | – | – | – | – |" % (
                    "{:,}".format(rate), e["qemu_vcpus"], c.get("error", "?")))
        for ep, u in e["understudy"].items():
            p = u.get("pause_us") or {}
            ok = "yes" if u.get("kept_up") else "NO"
            if u.get("error"):
                ok += " (%s)" % u["error"]
            L.append("| %s | Understudy, %s ms epochs | %d vCPU `%s` | %s ckpts | %s, %.0f of %.0f ckpt/s | %s / %s / %s | – | %s MB/s on the wire | %s |" % (
                "{:,}".format(rate), ep, u["vcpus"], u["churn"], u.get("checkpoints", 0), ok,
                u.get("checkpoints_per_s") or 0, u["nominal_checkpoints_per_s"],
                fmt(ms(p.get("p50"))), fmt(ms(p.get("p99"))), fmt(ms(p.get("max"))),
                fmt(u.get("wire_mb_per_s")), "{:,}".format(u["guest_pages_per_s"]) if u.get("guest_pages_per_s") else "–"))
    L.append("")
    L.append("| dirty rate asked | QEMU default downtime p50 / max (ms) | QEMU auto-converge p50 / max (ms) | Understudy p99 pause 25 ms / 5 ms (ms) "
             "| ratio QEMU default p50 / Understudy p99 (25 ms, 5 ms) | same, auto-converge | ≥ 10× |")
    L.append("| ---: | --- | --- | --- | --- | --- | --- |")
    for e in summary["rates"]:
        qd, qa = e["qemu"]["default"]["downtime_ms"], e["qemu"]["auto-converge"]["downtime_ms"]
        u = e["understudy"]
        p99s = [fmt(ms((u[k].get("pause_us") or {}).get("p99")), 2) for k in u]

        def rat(v):
            out = []
            for k in u:
                r = e["ratios"].get("%s_over_understudy_%sms_p99" % (v, k))
                out.append("%s× (max %s×)" % (ratio_fmt(r["downtime_p50"]), ratio_fmt(r["downtime_max"]))
                           if r else "did not converge")
            return ", ".join(out)
        met = e["pause_target_met"]
        L.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            "{:,}".format(e["rate_pages_per_s"]),
            "%s / %s" % (fmt(qd["p50"], 0), fmt(qd["max"], 0)) if qd["p50"] is not None else "did not converge",
            "%s / %s" % (fmt(qa["p50"], 0), fmt(qa["max"], 0)) if qa["p50"] is not None else "did not converge",
            " / ".join(p99s), rat("default"), rat("auto_converge"),
            "–" if met is None else ("met" if met else "MISSED")))
    return "\n".join(L)


def plot(summary, results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rates = summary["rates"]
    fig, axes = plt.subplots(1, len(rates), figsize=(6.2 * len(rates), 5.2), squeeze=False)
    for ax, e in zip(axes[0], rates):
        rate = e["rate_pages_per_s"]
        rr = results[rate]

        def ecdf(vals_ms, label, style, color, marker=None):
            if not vals_ms:
                return
            v = sorted(vals_ms)
            y = [(i + 1) / len(v) for i in range(len(v))]
            ax.step(v, y, where="post", linestyle=style, color=color, marker=marker, markersize=5, label=label)
        colors = {"25": "tab:blue", "5": "tab:cyan"}
        for ep, u in rr["understudy"].items():
            p = [x / 1000.0 for x in u.get("pauses_us", [])]
            ecdf(p, "Understudy %s ms epochs: %d pauses, p99 %s ms" % (ep, len(p), fmt(ms((u.get("pause_us") or {}).get("p99")), 2)),
                 "-", colors.get(str(ep), "tab:green"), "s" if len(p) < 20 else None)
        c = rr.get("colo")
        if c and c.get("pauses_us"):
            ecdf([x / 1000.0 for x in c["pauses_us"]], "QEMU COLO (every %d ms): %d pauses" % (c["delay_ms"], len(c["pauses_us"])),
                 "-.", "tab:purple")
        for v, col in (("default", "tab:red"), ("auto-converge", "tab:orange")):
            q = e["qemu"][v]
            d = q["downtime_ms"]["all"]
            lab = "QEMU migration %s: downtime, %d of %d converged" % (v, q["converged"], q["runs"])
            if d:
                ecdf(d, lab, "--", col, "o")
            else:
                ax.plot([], [], "--", color=col, label=lab + " (none)")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("VM stopped per checkpoint / final stop-and-copy (ms, log scale)")
        ax.set_ylabel("fraction of pauses / migrations ≤ x")
        ax.set_title("%s pages/s asked (%s MB/s dirtied)" % ("{:,}".format(rate), fmt(rate * PAGE / 1e6, 0)))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7.5, loc="lower right")
    fig.suptitle("Understudy checkpoint pauses vs QEMU 7.2 live-migration downtime and COLO pauses\nchurn, 1 GiB guest, %s, %s"
                 % (summary["date"], summary["machine"]), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 migration per variant, 20 s cap, 3 s windows (~3 min)")
    ap.add_argument("--build-dir", default=os.path.join(REPO, "build"))
    ap.add_argument("--bench", help="bench_checkpoint (default BUILD/bench/bench_checkpoint)")
    ap.add_argument("--image", help="churn image (default BUILD/guest/churn.elf; copied once, used by both systems)")
    ap.add_argument("--rates", default="10000,30000,150000", help="total dirty pages/s, comma-separated")
    ap.add_argument("--repeats", type=int, help="migrations per QEMU variant and rate (5; --quick 1)")
    ap.add_argument("--timeout", type=float, help="s before a migration is cancelled as not converged (60; --quick 20)")
    ap.add_argument("--seconds", type=float, help="Understudy measuring window per run (10; --quick 3)")
    ap.add_argument("--epochs", default="25,5", help="Understudy epochs in ms")
    ap.add_argument("--mib", type=int, default=1024, help="guest memory (both systems)")
    ap.add_argument("--max-vcpu-rate", type=int, default=60000,
                    help="above this total rate the guest gets 2 vCPUs at half the rate each (one vCPU tops out near "
                         "60,000 pages/s under dirty tracking here)")
    ap.add_argument("--vcpus", type=int, help="vCPUs at every rate, the rate split evenly (default: 1, or 2 above "
                    "--max-vcpu-rate)")
    ap.add_argument("--qemu-one-vcpu", action="store_true",
                    help="QEMU's guest keeps 1 vCPU at the whole rate whatever Understudy's has (the behaviour before "
                         "the guest runtime could start APs under QEMU)")
    ap.add_argument("--colo-delay", type=int, default=25, help="COLO x-checkpoint-delay in ms")
    ap.add_argument("--colo-seconds", type=float, help="COLO measuring window (5; --quick 2)")
    ap.add_argument("--no-colo", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="directory for vs_qemu.{json,md,png}")
    ap.add_argument("--machine", default="Debian 12, 2 cores, KVM PVM backend (nested)")
    ap.add_argument("--replot", metavar="RAW_JSON", help="no measuring: rebuild table, JSON and plot from a -raw.json")
    args = ap.parse_args()
    if args.replot:
        return replot(args.replot)
    q = args.quick
    args.repeats = args.repeats or (1 if q else 5)
    args.timeout = args.timeout or (20.0 if q else 60.0)
    args.seconds = args.seconds or (3.0 if q else 10.0)
    args.colo_seconds = args.colo_seconds or (2.0 if q else 5.0)
    args.rates = [int(x) for x in args.rates.split(",")]
    epochs = [int(x) for x in args.epochs.split(",")]
    bench = args.bench or os.path.join(args.build_dir, "bench", "bench_checkpoint")
    image_src = args.image or os.path.join(args.build_dir, "guest", "churn.elf")
    for p in (bench, image_src):
        if not os.path.exists(p):
            sys.exit("vs_qemu: %s is missing (build it: cmake -S . -B build && make -C build bench_checkpoint)" % p)
    if shutil.which(QEMU) is None:
        sys.exit("vs_qemu: %s is missing (bench/vs_qemu/install-deps.sh)" % QEMU)
    os.makedirs(args.out, exist_ok=True)

    # One copy of the image for the whole run: both systems boot exactly these bytes even
    # if the build tree is rebuilt meanwhile.
    rundir = tempfile.mkdtemp(prefix="vsq-run-", dir="/tmp")
    atexit.register(shutil.rmtree, rundir, True)
    image = os.path.join(rundir, "churn.elf")
    shutil.copyfile(image_src, image)
    sha = hashlib.sha256(open(image, "rb").read()).hexdigest()
    qver = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t_start = time.monotonic()
    log("vs_qemu %s: rates %s, %d migration(s) per QEMU variant (cap %.0f s), Understudy %s ms epochs for %.0f s each"
        % (date, args.rates, args.repeats, args.timeout, args.epochs, args.seconds))

    results = {}
    for rate in args.rates:
        u_vcpus = args.vcpus or (1 if rate <= args.max_vcpu_rate else 2)
        # churn's keys are per vCPU: N vCPUs at rate/N each dirty rate/N distinct pages apiece
        u_cmd = "pages=%d rate=%d content=stamp" % (rate // u_vcpus, rate // u_vcpus)
        q_vcpus = 1 if args.qemu_one_vcpu else u_vcpus
        qemu_cmd = "pages=%d rate=%d content=stamp" % (rate, rate) if q_vcpus == 1 else u_cmd
        rr = results[rate] = {"qemu": {"default": [], "auto-converge": []}, "understudy": {}, "colo": None,
                              "qemu_cmdline": qemu_cmd, "understudy_cmdline": u_cmd, "understudy_vcpus": u_vcpus,
                              "qemu_vcpus": q_vcpus}
        # Alternating: after QEMU's i-th pair of migrations comes Understudy's i-th protection
        # run (and COLO), so drifts of the shared machine hit both systems alike.
        extra = {}
        for k, ep in enumerate(epochs):
            extra.setdefault(min(k, args.repeats - 1), []).append(("understudy", ep))
        if not args.no_colo:
            extra.setdefault(min(len(epochs), args.repeats - 1), []).append(("colo", args.colo_delay))
        for i in range(args.repeats):
            for ac in (False, True):
                v = "auto-converge" if ac else "default"
                log("[%4.0f s] %s pages/s: QEMU migration %s #%d, %d vCPU(s) ..." % (
                    time.monotonic() - t_start, rate, v, i + 1, q_vcpus))
                r = qemu_migration(image, qemu_cmd, args.mib, q_vcpus, ac, args.timeout, 2.0)
                log("         %s, downtime %s ms, total %s ms, %s MiB, guest %s pages/s%s" % (
                    r.get("status"), r.get("downtime_ms"), r.get("total_time_ms"),
                    fmt((r.get("ram_transferred_bytes") or 0) / 2**20, 0), r.get("guest_rate_during"),
                    (", error: " + r["error"]) if r.get("error") else ""))
                rr["qemu"][v].append(r)
            for kind, x in extra.get(i, []):
                if kind == "understudy":
                    log("[%4.0f s] %s pages/s: Understudy %d ms epochs, %d vCPU(s) ..." % (
                        time.monotonic() - t_start, rate, x, u_vcpus))
                    u = understudy_protect(bench, image, u_cmd, args.mib, u_vcpus, x, args.seconds, rate)
                    p = u.get("pause_us") or {}
                    log("         pause p50/p99/max %s/%s/%s ms, %s ckpt/s, kept up %s, guest %s pages/s%s" % (
                        fmt(ms(p.get("p50")), 2), fmt(ms(p.get("p99")), 2), fmt(ms(p.get("max")), 2),
                        fmt(u.get("checkpoints_per_s")), u.get("kept_up"), u.get("guest_pages_per_s"),
                        (", error: " + u["error"]) if u.get("error") else ""))
                    rr["understudy"][x] = u
                else:
                    log("[%4.0f s] %s pages/s: QEMU COLO, checkpoint every %d ms ..." % (time.monotonic() - t_start, rate, x))
                    c = colo_run(image, qemu_cmd, args.mib, q_vcpus, x, args.colo_seconds)
                    p = c.get("pause_us") or {}
                    log("         worked %s, pause p50/p99/max %s/%s/%s ms, %s ckpt/s%s" % (
                        c.get("worked"), fmt(ms(p.get("p50"))), fmt(ms(p.get("p99"))), fmt(ms(p.get("max"))),
                        fmt(c.get("checkpoints_per_s")), (", error: " + c["error"]) if c.get("error") else ""))
                    rr["colo"] = c

    meta = {"date": date, "rates": args.rates, "machine": args.machine, "host": platform.node(), "kernel": platform.release(),
            "quick": q, "qemu": qver, "image_sha256": sha, "guest_mib": args.mib,
            "repeats": args.repeats, "migration_timeout_s": args.timeout, "understudy_window_s": args.seconds,
            "epochs_ms": epochs, "duration_s": round(time.monotonic() - t_start, 1)}
    meta.update(provenance())
    base = os.path.join(args.out, "vs_qemu" + ("-quick" if q else ""))
    with open(base + "-raw.json", "w") as f:  # every run, with every pause
        json.dump({"meta": meta, "results": {str(k): v for k, v in results.items()}}, f)
    return report(results, meta, base)


def replot(raw_path):
    raw = json.load(open(raw_path))
    results = {int(k): v for k, v in raw["results"].items()}
    for r in results.values():
        r["understudy"] = {int(k): x for k, x in r["understudy"].items()}
    base = raw_path[:-len("-raw.json")] if raw_path.endswith("-raw.json") else raw_path
    return report(results, raw["meta"], base)


def report(results, meta, base):
    class Rates:
        rates = list(results)
    summary = build_summary(results, Rates, meta)
    table = table_md(summary, results)
    date, qver, q = meta["date"], meta["qemu"], meta["quick"]
    with open(base + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    header = "Measured %s on %s (kernel %s; %s; guest %d MiB; churn.elf sha256 %s…; run took %.0f s%s)\n\n" % (
        date, meta["machine"], meta["kernel"], qver, meta["guest_mib"], meta["image_sha256"][:12], meta["duration_s"],
        ", --quick" if q else "")
    with open(base + ".md", "w") as f:
        f.write(header + table + "\n")
    try:
        plot(summary, results, base + ".png")
        png = base + ".png"
    except ImportError:
        png = None
        log("vs_qemu: no matplotlib, no plot (bench/vs_qemu/install-deps.sh)")
    print(header + table)
    t = summary["targets"]
    print("\ntargets: p99 pause >= 10x shorter than QEMU downtime: %s; protected where QEMU did not converge (%s): %s"
          % ("met" if t["pause_p99_10x_shorter_than_qemu_downtime"] else "MISSED",
             ", ".join(str(x) for x in t["rates_where_qemu_default_did_not_converge"]) or "none",
             {True: "met", False: "MISSED", None: "n/a"}[t["understudy_protects_where_qemu_does_not_converge"]]))
    print("files: %s.json %s.md %s-raw.json %s" % (base, base, base, png or ""))
    print("JSON: " + json.dumps({k: v for k, v in summary.items() if k != "rates"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
