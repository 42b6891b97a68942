#!/usr/bin/python3
"""Failover drills and their benchmark (issue 5): inject a fault into a protected pair
running in the namespace topology of docs/testing.md while a verifying client writes
through RESP, then measure detection, promotion, the client-observed outage and the
acknowledged writes lost. Python 3 standard library only; needs root and /dev/kvm.

  bench/drill.py KIND [--runs N] [--quick] [--build DIR] [--json FILE]
  KIND: kill-primary | hang-primary | kill-backup | partition | corrupt-link | all
        (or several joined by commas)

See bench/README.md ("drill.py") for what each figure means.
"""

import argparse
import datetime
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

from provenance import provenance

KINDS = ["kill-primary", "hang-primary", "kill-backup", "partition", "corrupt-link"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPOLOGY = os.path.join(REPO, "scripts", "topology.sh")
GUEST_IP, CLIENT_IP, PRIMARY_IP, BACKUP_IP = "10.77.0.2", "10.77.0.10", "10.77.0.11", "10.77.0.12"
GUEST_MAC = "52:54:00:12:34:56"  # understudy's default --mac
KV_PORT, BACKUP_PORT, PROXY_PORT = 6379, 7400, 7401
TARGET_PROMOTION_P99_MS = 50.0
TARGET_OUTAGE_P99_MS = 1000.0
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{3}) ")


def now():
    return time.time()  # CLOCK_REALTIME, comparable with the VMMs' log timestamps


# ---------------------------------------------------------------------------------------
# The verifying client (runs inside NAME-client: `drill.py --client ...`)
# ---------------------------------------------------------------------------------------

class RespConn:
    def __init__(self, host, port, timeout):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.sock.sendall(out)

    def _line(self, deadline):
        while b"\r\n" not in self.buf:
            self.sock.settimeout(max(0.01, min(0.5, deadline - time.monotonic())))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                if time.monotonic() >= deadline:
                    raise TimeoutError("no reply in time")
                continue
            if not chunk:
                raise ConnectionError("closed by the server")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self, deadline):
        line = self._line(deadline)
        if line[:1] == b"$":
            n = int(line[1:])
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed by the server")
                self.buf += chunk
            val, self.buf = self.buf[:n], self.buf[n + 2:]
            return val
        return line


def client_main(args):
    """Writes SET drill:<tag>:<conn>:<seq> <seq> on persistent connections until told to
    stop (STOP on stdin), then reads every acknowledged key back. With --bulk-conns, more
    connections each keep --bulk-depth SETs of --bulk-bytes random hex in flight (big
    checkpoints for the "transmission" phase); their keys are read back as well. Prints
    READY once every small-write connection has had a reply (or after 30 s), then one
    RESULT line of JSON."""
    stop = threading.Event()
    lock = threading.Lock()
    replies = []  # wall-clock time of every successful small-write reply
    acked = {}    # key -> value, only once +OK arrived
    conns = []
    ready = [threading.Event() for _ in range(args.conns)]

    def lost_connection(st, c, e, pending):
        st["errors"].append("%.3f %s: %s" % (now(), type(e).__name__, e))
        if c is not None:
            st["in_doubt"] += pending  # sent, never acknowledged: not counted either way
            st["reconnects"] += 1
            c.close()
        time.sleep(0.05)

    def writer(ci):
        st = {"conn": ci, "reconnects": 0, "errors": [], "sent": 0, "acked": 0, "in_doubt": 0}
        with lock:
            conns.append(st)
        seq = 0
        c = None
        while not stop.is_set():
            try:
                if c is None:
                    c = RespConn(GUEST_IP, KV_PORT, args.reply_timeout)
                seq += 1
                key = "drill:%s:%d:%d" % (args.tag, ci, seq)
                c.send("SET", key, seq)
                st["sent"] += 1
                r = c.reply(time.monotonic() + args.reply_timeout)
                t = now()
                if r == b"+OK":
                    with lock:
                        acked[key] = str(seq)
                        replies.append(t)
                    st["acked"] += 1
                    ready[ci].set()
                else:
                    st["errors"].append("%.3f unexpected reply %r" % (t, r[:60]))
            except (OSError, ConnectionError, TimeoutError, ValueError) as e:
                lost_connection(st, c, e, 1)
                c = None
                continue
            if args.interval_ms > 0:
                time.sleep(args.interval_ms / 1000.0)
        if c is not None:
            c.close()

    def bulk_writer(bi):
        st = {"conn": "bulk%d" % bi, "reconnects": 0, "errors": [], "sent": 0, "acked": 0, "in_doubt": 0}
        with lock:
            conns.append(st)
        seq = 0
        c = None
        pending = []  # (key, value) sent, reply not read yet; replies come in order
        while not stop.is_set():
            try:
                if c is None:
                    c = RespConn(GUEST_IP, KV_PORT, args.reply_timeout)
                    pending = []
                while len(pending) < args.bulk_depth:
                    seq += 1
                    key = "drill:%s:b%d:%d" % (args.tag, bi, seq)
                    value = os.urandom(args.bulk_bytes // 2).hex()  # random: no codec shrinks it
                    c.send("SET", key, value)
                    st["sent"] += 1
                    pending.append((key, value))
                r = c.reply(time.monotonic() + args.reply_timeout)
                key, value = pending.pop(0)
                if r == b"+OK":
                    with lock:
                        acked[key] = value
                    st["acked"] += 1
                else:
                    st["errors"].append("%.3f unexpected reply %r" % (now(), r[:60]))
            except (OSError, ConnectionError, TimeoutError, ValueError) as e:
                lost_connection(st, c, e, len(pending))
                c = None
        if c is not None:
            c.close()

    threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(args.conns)]
    threads += [threading.Thread(target=bulk_writer, args=(i,), daemon=True) for i in range(args.bulk_conns)]
    t_start = now()
    for t in threads:
        t.start()

    def announce_ready():
        # A pair that never serves (a primary failing in its initial synchronization)
        # still gets READY after 30 s, so the controller's STOP is never missed.
        deadline = time.monotonic() + 30
        for ev in ready:
            ev.wait(max(0.0, deadline - time.monotonic()))
        print("READY %.6f" % now(), flush=True)

    threading.Thread(target=announce_ready, daemon=True).start()
    for line in sys.stdin:
        if line.strip() == "STOP":
            break
    t_stop = now()
    stop.set()
    for t in threads:
        t.join(args.reply_timeout + 2)
    # Read back every acknowledged key from whoever serves the guest's address now.
    lost, wrong, rb_err = [], [], None
    t_rb = now()
    with lock:
        expected = dict(acked)
    try:
        c = RespConn(GUEST_IP, KV_PORT, 5)
        keys = sorted(expected)
        for i in range(0, len(keys), 100):
            batch = keys[i:i + 100]
            for k in batch:
                c.send("GET", k)
            for k in batch:
                v = c.reply(time.monotonic() + 10)
                if v is None:
                    lost.append(k)
                elif v.decode() != expected[k]:
                    wrong.append(k)
        c.close()
    except (OSError, ConnectionError, TimeoutError, ValueError) as e:
        rb_err = "%s: %s" % (type(e).__name__, e)
    with lock:
        rs = sorted(replies)
    print("RESULT " + json.dumps({
        "t_start": t_start, "t_stop": t_stop, "replies": rs, "acked": len(expected),
        "lost": len(lost) + len(wrong), "lost_keys": (lost + wrong)[:20], "readback_error": rb_err,
        "readback_s": now() - t_rb, "conns": conns}), flush=True)


# ---------------------------------------------------------------------------------------
# The corrupting proxy (runs inside NAME-backup: `drill.py --proxy ...`)
# ---------------------------------------------------------------------------------------

def proxy_main(args):
    """Forwards LISTEN -> TARGET, every connection. After SIGUSR1, flips one byte (XOR
    0xff) in the middle of the next chunk of at least 64 bytes that the primary sends on
    the replication stream (the connection that began with "USREPL\\r\\n", or with a link
    hello for channel 1 when the link is sealed: the flip then fails a frame's tag)."""
    armed = threading.Event()
    flipped = threading.Lock()
    state = {"done": False}
    signal.signal(signal.SIGUSR1, lambda *_: armed.set())
    lh, lp = args.proxy_listen.rsplit(":", 1)
    th, tp = args.proxy_target.rsplit(":", 1)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((lh, int(lp)))
    srv.listen(8)
    srv.settimeout(0.2)
    print("LISTENING", flush=True)

    def pump(src, dst, upstream):
        first, offset = b"", 0
        try:
            while True:
                data = src.recv(262144)
                if not data:
                    break
                if upstream:
                    if len(first) < 20:
                        first += data[:20 - len(first)]
                    stream = first.startswith(b"USREPL") or (first.startswith(b"USLINK") and first[16:20] == b"\x01\0\0\0")
                    if stream and armed.is_set() and len(data) >= 64:
                        with flipped:
                            if not state["done"]:
                                state["done"] = True
                                i = len(data) // 2
                                b = bytearray(data)
                                before = b[i]
                                b[i] ^= 0xFF
                                data = bytes(b)
                                print("FLIPPED %.6f stream_offset=%d chunk=%d byte 0x%02x->0x%02x"
                                      % (now(), offset + i, len(b), before, b[i]), flush=True)
                    offset += len(data)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    while True:
        try:
            a, _ = srv.accept()
        except socket.timeout:
            continue
        except InterruptedError:
            continue
        try:
            b = socket.create_connection((th, int(tp)), timeout=5)
        except OSError:
            a.close()
            continue
        for s in (a, b):
            s.settimeout(None)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pump, args=(a, b, True), daemon=True).start()
        threading.Thread(target=pump, args=(b, a, False), daemon=True).start()


# ---------------------------------------------------------------------------------------
# The controller
# ---------------------------------------------------------------------------------------

class Proc:
    """A process in a namespace; every output line kept with its arrival time."""

    def __init__(self, ns, argv, stdin=False):
        self.lines = []  # (arrival wall time, stream, text)
        self.cv = threading.Condition()
        self.p = subprocess.Popen(["ip", "netns", "exec", ns] + argv, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                  start_new_session=True, text=True, errors="replace", bufsize=1)
        self.pid = self.p.pid  # `ip netns exec` execs the command: this is its pid
        for name, f in (("out", self.p.stdout), ("err", self.p.stderr)):
            threading.Thread(target=self._read, args=(name, f), daemon=True).start()

    def _read(self, name, f):
        for line in f:
            with self.cv:
                self.lines.append((now(), name, line.rstrip("\n")))
                self.cv.notify_all()

    def find(self, text, after=0.0):
        with self.cv:
            for t, _, l in self.lines:
                if text in l and t >= after:
                    return t, l
        return None

    def wait_for(self, text, timeout, after=0.0):
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                for t, _, l in self.lines:
                    if text in l and t >= after:
                        return t, l
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                if self.p.poll() is not None:  # exited: give its last lines a moment
                    deadline = min(deadline, time.monotonic() + 0.5)
                self.cv.wait(min(left, 0.1))

    def text(self):
        with self.cv:
            return "\n".join("%.3f %s %s" % x for x in self.lines)

    def signal(self, sig):
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def alive(self):
        return self.p.poll() is None

    def end(self):
        if self.p.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            pass


def log_time(line):
    """The wall-clock time in a spdlog line (`YYYY-MM-DDTHH:MM:SS.mmm`, local time)."""
    m = LOG_TIME.match(line)
    if not m:
        return None
    return datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").timestamp() + int(m.group(2)) / 1000.0


def sh(argv, check=True, timeout=60):
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(argv), r.returncode, r.stdout.strip()))
    return r.stdout


def fdb_port(name):
    """The switch port where the guest's MAC was last seen: vp (primary) or vb (backup)."""
    try:
        out = sh(["ip", "netns", "exec", name + "-sw", "bridge", "fdb", "show", "br", "br0"], check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        f = line.split()
        if f and f[0].lower() == GUEST_MAC and "dev" in f:
            return f[f.index("dev") + 1]
    return None


def partition(name):
    """Cut primary <-> backup host traffic inside NAME-primary only: policy-routing
    blackhole rules for packets to 10.77.0.12 (output) and from it (input). This machine
    has no nft/iptables, and its tc has no actions (CONFIG_NET_ACT_* off), so routing it is.
    The rule that looks up the local table (priority 0) is moved behind the blackholes,
    or packets addressed to this host would be accepted before the `from` rule is seen.
    The guest's traffic is bridged, never routed by this host: clients still reach it."""
    ns = ["ip", "netns", "exec", name + "-primary", "ip", "rule"]
    sh(ns + ["add", "priority", "10", "to", BACKUP_IP + "/32", "blackhole"])
    sh(ns + ["add", "priority", "11", "from", BACKUP_IP + "/32", "blackhole"])
    sh(ns + ["add", "priority", "100", "lookup", "local"])
    sh(ns + ["del", "priority", "0", "lookup", "local"])


def pct(xs, p):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(xs):
    v = [x for x in xs if x is not None]
    if not v:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    return {"n": len(v), "p50": round(pct(v, 50), 1), "p99": round(pct(v, 99), 1), "max": round(max(v), 1)}


class Scenario:
    """One drill: which side fails (primary, backup, or for the legacy kinds the link
    between them), how (kill = SIGKILL, hang = SIGSTOP, partition = the failing host's
    switch port disabled in both directions, link-cut = only primary <-> backup traffic
    cut, corrupt = one byte flipped on the stream) and when (steady, transmission,
    initial-sync). The expected outcome follows from these three (bench/README.md)."""

    def __init__(self, label, side, fault, phase="steady"):
        self.label, self.side, self.fault, self.phase = label, side, fault, phase

    @property
    def promotion_expected(self):
        if self.phase == "initial-sync" or self.fault == "corrupt":
            return False  # no committed checkpoint yet / a corrupt stream is not a dead primary
        # Without an arbiter an isolated backup promotes too, unseen behind its dead port.
        return self.side in ("primary", "link") or self.fault == "partition"

    @property
    def serving_expected(self):
        """Who answers the clients at the end: "backup", "primary" or None (nobody)."""
        if self.side == "primary":
            return None if self.phase == "initial-sync" else "backup"
        if self.side == "backup" or self.fault == "corrupt":
            return "primary"
        return "backup"  # link-cut: the switch follows the promoted VM's RARP

    @property
    def unprotected_expected(self):
        """The primary lives on, unprotected (SIGKILLed or SIGSTOPped primaries do not)."""
        return self.side != "primary" or self.fault == "partition"

    def describe(self):
        parts = ["the backup promotes" if self.promotion_expected else "the backup must NOT promote"]
        if self.phase == "initial-sync":
            parts[0] += " (no committed checkpoint)"
        if self.side == "backup" and self.fault == "partition" and self.promotion_expected:
            parts[0] += " (arbiter none), isolated, unseen by clients"
        if self.unprotected_expected:
            parts.append("the primary runs on unprotected" + (", isolated" if self.side == "primary" else ""))
        serving = self.serving_expected
        if serving is None:
            parts.append("nobody serves; writes acknowledged during the synchronization (output is not held "
                         "before the first checkpoint) are lost with the primary")
        else:
            parts.append("the %s serves; 0 acknowledged writes lost; every connection survives" % serving)
        return "; ".join(parts)


LEGACY = {"kill-primary": Scenario("kill-primary", "primary", "kill"),
          "hang-primary": Scenario("hang-primary", "primary", "hang"),
          "kill-backup": Scenario("kill-backup", "backup", "kill"),
          "partition": Scenario("partition", "link", "link-cut"),
          "corrupt-link": Scenario("corrupt-link", "link", "corrupt")}
SIDES, PHASES, FAULTS = ["primary", "backup"], ["steady", "transmission", "initial-sync"], ["kill", "hang", "partition"]
MATRIX = [Scenario("%s/%s/%s" % (side, phase, fault), side, fault, phase)
          for side in SIDES for phase in PHASES for fault in FAULTS]


def isolate(name, port):
    """Disable a host's port on the switch: nothing passes either way (a dead cable), and
    neither host sees a carrier change."""
    sh(["bridge", "-n", name + "-sw", "link", "set", "dev", port, "state", "0"])


def stream_unacked(pid, port):
    """Bytes the primary sent towards the backup that the backup's TCP has not yet
    acknowledged (the largest over its connections to BACKUP_IP:port), from
    /proc/PID/net/tcp, the table of the process's own namespace; None without one."""
    remote = "%08X:%04X" % (struct.unpack("<I", socket.inet_aton(BACKUP_IP))[0], port)
    best = None
    try:
        with open("/proc/%d/net/tcp" % pid) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[2] == remote and fields[3] == "01":  # 01: established
                    tx = int(fields[4].split(":")[0], 16)
                    best = tx if best is None else max(best, tx)
    except OSError:
        return None
    return best


def control_status(path):
    """The status object of docs/status.md from an instance's control socket, or None."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(path)
            s.sendall(b'{"cmd":"status"}\n')
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        answer = json.loads(buf)
        return answer["status"] if answer.get("ok") and answer["status"].get("format") == 1 else None
    except (OSError, ValueError, KeyError, AttributeError):
        return None


def inject(sc, name, primary, backup, proxy):
    """The fault itself; returns its time and, for corrupt, the proxy's line."""
    target = primary if sc.side == "primary" else backup
    t_fault = now()
    if sc.fault == "kill":
        target.signal(signal.SIGKILL)
    elif sc.fault == "hang":
        target.signal(signal.SIGSTOP)
    elif sc.fault == "partition":
        isolate(name, "vp" if sc.side == "primary" else "vb")
    elif sc.fault == "link-cut":
        partition(name)
    elif sc.fault == "corrupt":
        proxy.signal(signal.SIGUSR1)
        f = proxy.wait_for("FLIPPED", 5)
        if not f:
            raise RuntimeError("the proxy flipped nothing in 5 s (no stream traffic)")
        return float(f[1].split()[1]), f[1]  # when the byte was actually flipped
    return t_fault, None


def inject_mid_transmission(sc, name, primary, backup, via, opts, res):
    """Waits until at least --inflight-kib of checkpoint stream is unacknowledged by the
    backup (a checkpoint on the wire), then injects at once. Records the queue seen just
    before, the sample's age at the fault and (hang, partition: the primary still has its
    socket) the queue just after; gives up waiting after --inflight-wait s and injects
    anyway, reported as not in flight."""
    threshold = opts.inflight_kib * 1024
    deadline = time.monotonic() + opts.inflight_wait
    while True:
        q, t_q = stream_unacked(primary.pid, via), now()
        if (q is not None and q >= threshold) or time.monotonic() > deadline:
            break
        time.sleep(0.0005)
    t_fault, flip = inject(sc, name, primary, backup, None)
    after = stream_unacked(primary.pid, via) if sc.fault in ("hang", "partition") else None
    res["stream_unacked_before"] = q
    res["stream_sample_age_ms"] = round((t_fault - t_q) * 1e3, 2)
    res["stream_unacked_after"] = after
    res["in_flight"] = q is not None and q >= threshold
    return t_fault, flip


def inject_during_sync(sc, name, primary, backup, primary_sock, opts, res):
    """Waits until the primary's status says `syncing` with --sync-fraction of memory
    sent, then injects; the run fails if the initial checkpoint was acknowledged first."""
    deadline = time.monotonic() + 120
    while True:
        if primary.find("initial checkpoint acknowledged"):
            raise RuntimeError("the initial synchronization ended before the fault (raise --sync-memory)")
        lost = primary.find("UNPROTECTED")
        if lost:
            raise RuntimeError("the primary lost its backup before the fault: %s\nbackup:\n%s" % (
                lost[1], backup.text()[-1500:]))
        st = control_status(primary_sock)
        sync = st.get("sync") if st else None
        if st and st.get("state") == "syncing" and sync and sync.get("bytes_total") and \
                sync["bytes_sent"] >= opts.sync_fraction * sync["bytes_total"]:
            break
        if time.monotonic() > deadline or not primary.alive():
            raise RuntimeError("the primary never reached the synchronization:\n" + primary.text()[-2000:])
        time.sleep(0.02)
    t_fault, _ = inject(sc, name, primary, backup, None)
    res["sync_at_fault"] = {"round": sync.get("round"), "bytes_sent": sync["bytes_sent"],
                            "bytes_total": sync["bytes_total"]}
    return t_fault


def one_run(sc, idx, opts, counter):
    cli = os.path.join(opts.build, "cli", "understudy")
    kv = os.path.join(opts.build, "guest", "kv.elf")
    name = "dr%05d%03d" % (os.getpid() % 100000, counter % 1000)
    tap = name + "-tap"
    tag = "%s-%d-%d" % (sc.label.replace("/", "-"), idx, int(now()))
    res = {"kind": sc.label, "side": sc.side, "fault": sc.fault, "phase": sc.phase, "run": idx,
           "topology": name, "error": None, "expected": sc.describe()}
    key = "/tmp/understudy-drill-%d.key" % os.getpid()  # the link key both hosts use (docs/security.md)
    if not os.path.exists(key):
        sh([cli, "keygen", key])
    primary_sock = "/tmp/understudy-drill-%s-primary.sock" % name
    memory, guest_cmdline = "128M", "net.ip=%s/24" % GUEST_IP
    if sc.phase == "transmission":
        memory, guest_cmdline = "512M", guest_cmdline + " kv.mem=384M"  # room for the bulk writers' values
    elif sc.phase == "initial-sync":
        memory = opts.sync_memory
    procs = []
    t_begin = now()
    try:
        sh([TOPOLOGY, "up", name], timeout=120)
        via, proxy = BACKUP_PORT, None
        if sc.fault == "corrupt":
            proxy = Proc(name + "-backup", [sys.executable, os.path.abspath(__file__), "--proxy",
                                            "--proxy-listen", "%s:%d" % (BACKUP_IP, PROXY_PORT),
                                            "--proxy-target", "%s:%d" % (BACKUP_IP, BACKUP_PORT)])
            procs.append(proxy)
            if not proxy.wait_for("LISTENING", 10):
                raise RuntimeError("proxy did not start:\n" + proxy.text())
            via = PROXY_PORT
        backup = Proc(name + "-backup", [cli, "backup", "--listen", "%s:%d" % (BACKUP_IP, BACKUP_PORT),
                                         "--promote", "--net-tap", tap, "--link-key", key])
        procs.append(backup)
        if not backup.wait_for("backup: listening", 15):
            raise RuntimeError("backup did not start:\n" + backup.text())
        primary = Proc(name + "-primary", [cli, "run", kv, "--memory", memory, "--net-tap", tap, "-c", guest_cmdline,
                                           "--backup", "%s:%d" % (BACKUP_IP, via), "--link-key", key,
                                           "--control-socket", primary_sock])
        procs.append(primary)
        client_argv = [sys.executable, os.path.abspath(__file__), "--client", "--tag", tag,
                       "--conns", str(opts.conns), "--interval-ms", str(opts.interval_ms),
                       "--reply-timeout", str(opts.reply_timeout),
                       "--bulk-conns", str(opts.bulk_conns if sc.phase == "transmission" else 0),
                       "--bulk-bytes", str(opts.bulk_bytes), "--bulk-depth", str(opts.bulk_depth)]
        flip = None
        if sc.phase == "initial-sync":
            # The client starts at once: its requests wait, held, for the first ACK.
            client = Proc(name + "-client", client_argv, stdin=True)
            procs.append(client)
            t_fault = inject_during_sync(sc, name, primary, backup, primary_sock, opts, res)
            acked = primary.find("initial checkpoint acknowledged")
            res["initial_ack_before_fault"] = bool(acked and (log_time(acked[1]) or acked[0]) <= t_fault)
        else:
            if not primary.wait_for("protected: initial checkpoint acknowledged", 90):
                raise RuntimeError("the primary was not protected:\n" + primary.text() + "\n" + backup.text())
            client = Proc(name + "-client", client_argv, stdin=True)
            procs.append(client)
            if not client.wait_for("READY", 40):
                raise RuntimeError("the client got no replies:\n" + client.text())
            time.sleep(opts.steady)
            if not primary.alive() or primary.find("UNPROTECTED"):
                raise RuntimeError("not protected before the fault:\n" + primary.text()[-1500:] + "\n" +
                                   backup.text()[-1500:])
            if sc.phase == "transmission":
                t_fault, flip = inject_mid_transmission(sc, name, primary, backup, via, opts, res)
            else:
                t_fault, flip = inject(sc, name, primary, backup, proxy)
        if flip:
            res["flip"] = flip
        res["t_fault"] = t_fault

        # Let the failure play out: wait for the expected reaction, then the tail.
        if sc.promotion_expected:
            backup.wait_for("PROMOTED", opts.post + 5, after=t_fault - 1)
        elif sc.side == "primary":
            backup.wait_for("session ended", 5, after=t_fault - 1)
        if sc.unprotected_expected:
            primary.wait_for("UNPROTECTED", 3, after=t_fault - 1)
        t_tail = now()
        time.sleep(opts.post if sc.promotion_expected else max(0.0, opts.post - (t_tail - t_fault)))
        if sc.fault == "hang":
            # Never resumed: a resumed primary (no arbiter) would be a second live copy.
            (primary if sc.side == "primary" else backup).signal(signal.SIGKILL)
        client.p.stdin.write("STOP\n")
        client.p.stdin.flush()
        # The read-back of the transmission phase's big values (hundreds of MB through the
        # guest) can take minutes on a loaded host: wait while the client works.
        r = client.wait_for("RESULT ", opts.result_timeout)
        if not r:
            raise RuntimeError("the client gave no result in %.0f s:\n%s" % (opts.result_timeout, client.text()))
        cr = json.loads(r[1][len("RESULT "):])

        # Figures.
        ended = backup.find("session ended", after=t_fault - 1)
        promoted = backup.find("PROMOTED", after=t_fault - 1)
        unprot = primary.find("UNPROTECTED", after=t_fault - 1)
        t_ended = log_time(ended[1]) if ended else None
        t_promoted = log_time(promoted[1]) if promoted else None
        res["backup_session_ended"] = ended[1] if ended else None
        res["backup_promoted"] = promoted[1] if promoted else None
        res["primary_unprotected"] = unprot[1] if unprot else None
        res["detection_ms"] = None
        if sc.side == "backup":
            # The primary prints UNPROTECTED from its once-a-second report loop: an upper bound.
            res["detection_ms"] = (unprot[0] - t_fault) * 1e3 if unprot else None
            res["detection_source"] = "primary UNPROTECTED line arrival (1 s report granularity)"
        else:
            res["detection_ms"] = (t_ended - t_fault) * 1e3 if t_ended else None
            res["detection_source"] = "backup 'session ended' log time (ms resolution)"
        res["primary_unprotected_ms"] = (unprot[0] - t_fault) * 1e3 if unprot else None
        res["promotion_ms"] = (t_promoted - t_ended) * 1e3 if (t_promoted and t_ended) else None
        reps = cr["replies"]
        after_promo = [t for t in reps if t_promoted and t >= t_promoted and sc.side != "backup"]
        res["promoted_to_first_reply_ms"] = (after_promo[0] - t_promoted) * 1e3 if after_promo else None
        gaps = [(b - a, a, b) for a, b in zip(reps, reps[1:])]
        g = max(gaps) if gaps else (None, None, None)
        res["outage_ms"] = g[0] * 1e3 if g[0] is not None else None  # the figure: longest gap in the run
        res["outage_from_fault_ms"] = (g[1] - t_fault) * 1e3 if g[1] else None
        # The fault's own outage: the longest gap that ends after the fault; its end is when
        # service resumed (SIGSTOP and a partition can let a few replies through first).
        fg = [x for x in gaps if x[2] > t_fault]
        fg = max(fg) if fg else None
        res["fault_gap_ms"] = fg[0] * 1e3 if fg else None
        res["resumed_ms"] = (fg[2] - t_fault) * 1e3 if fg else None
        if sc.side == "primary" and None not in (res["resumed_ms"], res["detection_ms"], res["promotion_ms"]):
            # What is left once the failure was handled: the client's TCP retransmission
            # timer (RTO >= 200 ms, doubling) waiting to resend into the promoted VM.
            res["retransmit_wait_ms"] = res["resumed_ms"] - res["detection_ms"] - res["promotion_ms"]
        res["acked"] = cr["acked"]
        # A failed read-back verifies nothing: every acknowledged write counts as lost.
        res["lost"] = cr["acked"] if cr["readback_error"] else cr["lost"]
        if sc.serving_expected is None:
            res["acked_unprotected"] = cr["acked"]  # acknowledged before protection began
        res["lost_keys"] = cr["lost_keys"]
        res["readback_error"] = cr["readback_error"]
        res["readback_s"] = round(cr["readback_s"], 1)
        res["conns"] = len(cr["conns"])
        res["conns_survived"] = sum(1 for c in cr["conns"] if c["reconnects"] == 0)
        res["client_errors"] = [e for c in cr["conns"] for e in c["errors"]][:6]
        port = fdb_port(name)
        res["switch_port"] = port
        res["primary_alive"] = primary.alive()
        res["backup_alive"] = backup.alive()
        if cr["readback_error"]:
            res["serving"] = "nobody (read-back failed)"
        elif port == "vb" and promoted:
            res["serving"] = "backup (promoted)"
        elif port == "vp" and primary.alive():
            res["serving"] = "primary" + (" (unprotected)" if unprot else "")
        else:
            res["serving"] = "unclear (switch port %s, primary %s, backup %s)" % (
                port, "alive" if primary.alive() else "gone", "promoted" if promoted else "not promoted")
        if promoted and primary.alive():
            res["split_brain"] = True  # two live copies (harmless only while one is cut off)
        res["violations"] = violations(sc, res)
        if opts.verbose or res["violations"]:
            res["logs"] = {"primary": primary.text()[-4000:], "backup": backup.text()[-4000:]}
    except Exception as e:  # a failed run is reported, the drill goes on
        res["error"] = "%s: %s" % (type(e).__name__, str(e)[-3000:])
        res["violations"] = ["the run failed: " + res["error"][:300]]
        res["logs"] = {"processes": [p.text()[-4000:] for p in procs]}  # in start order
    finally:
        res["wall_s"] = round(now() - t_begin, 1)
        if os.path.exists(primary_sock):  # a killed VMM leaves its socket file
            os.unlink(primary_sock)
        for p in procs:
            p.end()
        try:
            sh([TOPOLOGY, "down", name], check=False, timeout=60)
        except Exception:
            pass
    return res


def violations(sc, res):
    """Every way this run's outcome differs from what sc expects."""
    out = []
    serving = sc.serving_expected
    if res["lost"] and serving is not None:
        out.append("%d acknowledged writes lost (%s)" % (res["lost"], ", ".join(res["lost_keys"][:3])))
    if res.get("initial_ack_before_fault"):
        out.append("the initial checkpoint was acknowledged before the fault")
    ended = res["backup_session_ended"]
    if sc.phase == "initial-sync" and ended and not ended.endswith("committed checkpoint 0 kept"):
        out.append("the backup had a committed checkpoint at the fault: " + ended)
    promoted = bool(res["backup_promoted"])
    if promoted != sc.promotion_expected:
        out.append("the backup %s" % ("promoted" if promoted else "did not promote"))
    if sc.unprotected_expected and not (res["primary_alive"] and res["primary_unprotected"]):
        out.append("the primary did not run on unprotected (alive %s, UNPROTECTED line %s)" % (
            res["primary_alive"], "seen" if res["primary_unprotected"] else "missing"))
    if serving is None:
        if not res["readback_error"]:
            out.append("the guest's address still answered (serving at the end: %s)" % res["serving"])
    else:
        if not res["serving"].startswith(serving):
            out.append("serving at the end: %s, expected the %s" % (res["serving"], serving))
        if not res["acked"] or res["readback_error"]:
            out.append("the %s did not serve (acked %d, read-back %s)" % (serving, res["acked"],
                                                                         res["readback_error"] or "ok"))
        if res["conns_survived"] != res["conns"]:
            out.append("%d of %d connections had to reconnect" % (res["conns"] - res["conns_survived"], res["conns"]))
    return out


def fmt(v):
    return "-" if v is None else ("%.0f" % v if v >= 10 else "%.1f" % v)


def kind_summary(sc, runs):
    ok = [r for r in runs if not r.get("error")]
    s = {"kind": sc.label, "side": sc.side, "fault": sc.fault, "phase": sc.phase, "expected": sc.describe(),
         "runs": len(runs), "failed_runs": len(runs) - len(ok),
         "violated_runs": sum(1 for r in runs if r.get("violations")),
         "violations": ["run %d: %s" % (r["run"] + 1, v) for r in runs for v in r.get("violations", [])],
         "wall_s": summary([r.get("wall_s") for r in runs]),
         "detection_ms": summary([r.get("detection_ms") for r in ok]),
         "promotion_ms": summary([r.get("promotion_ms") for r in ok]),
         "promoted_to_first_reply_ms": summary([r.get("promoted_to_first_reply_ms") for r in ok]),
         "outage_ms": summary([r.get("outage_ms") for r in ok]),
         "fault_gap_ms": summary([r.get("fault_gap_ms") for r in ok]),
         "resumed_ms": summary([r.get("resumed_ms") for r in ok]),
         "retransmit_wait_ms": summary([r.get("retransmit_wait_ms") for r in ok]),
         "primary_unprotected_ms": summary([r.get("primary_unprotected_ms") for r in ok]),
         "acked_writes": sum(r.get("acked", 0) for r in ok),
         "lost_acked_writes": sum(r.get("lost", 0) for r in ok),
         "conns_survived": sum(r.get("conns_survived", 0) for r in ok),
         "conns": sum(r.get("conns", 0) for r in ok),
         "runs_all_conns_survived": sum(1 for r in ok if r.get("conns") and r["conns_survived"] == r["conns"]),
         "promoted_runs": sum(1 for r in ok if r.get("backup_promoted")),
         "split_brain_runs": sum(1 for r in ok if r.get("split_brain")),
         "serving": {}}
    if sc.phase == "transmission":
        s["in_flight_runs"] = sum(1 for r in ok if r.get("in_flight"))
        s["stream_unacked_before"] = summary([r.get("stream_unacked_before") for r in ok])
    if sc.phase == "initial-sync":
        s["sync_fraction_at_fault"] = summary([r["sync_at_fault"]["bytes_sent"] / r["sync_at_fault"]["bytes_total"]
                                               for r in ok if r.get("sync_at_fault")])
    for r in ok:
        s["serving"][r["serving"]] = s["serving"].get(r["serving"], 0) + 1
    if sc.promotion_expected and sc.side == "primary":
        p99 = s["promotion_ms"]["p99"]
        o99 = s["outage_ms"]["p99"]
        s["promotion_target_met"] = None if p99 is None else p99 <= TARGET_PROMOTION_P99_MS
        s["outage_target_met"] = None if o99 is None else o99 <= TARGET_OUTAGE_P99_MS
    s["lost_target_met"] = s["lost_acked_writes"] == 0 and s["failed_runs"] == 0
    return s


def print_table(sums):
    hdr = ("kind", "runs", "detect p50/p99/max", "promote p50/p99/max", "promo->reply p50/p99",
           "outage p50/p99/max", "resumed p50/p99", "retx wait p50/p99", "acked", "lost", "conns ok", "serving at end")
    rows = []
    for s in sums:
        d, p, pr, o, rw = s["detection_ms"], s["promotion_ms"], s["promoted_to_first_reply_ms"], s["outage_ms"], \
            s["retransmit_wait_ms"]
        rows.append((s["kind"], "%d%s" % (s["runs"], " (%d failed)" % s["failed_runs"] if s["failed_runs"] else ""),
                     "%s / %s / %s" % (fmt(d["p50"]), fmt(d["p99"]), fmt(d["max"])),
                     "%s / %s / %s" % (fmt(p["p50"]), fmt(p["p99"]), fmt(p["max"])),
                     "%s / %s" % (fmt(pr["p50"]), fmt(pr["p99"])),
                     "%s / %s / %s" % (fmt(o["p50"]), fmt(o["p99"]), fmt(o["max"])),
                     "%s / %s" % (fmt(s["resumed_ms"]["p50"]), fmt(s["resumed_ms"]["p99"])),
                     "%s / %s" % (fmt(rw["p50"]), fmt(rw["p99"])), str(s["acked_writes"]), str(s["lost_acked_writes"]),
                     "%d/%d" % (s["conns_survived"], s["conns"]),
                     ", ".join("%s x%d" % kv for kv in s["serving"].items())))
    w = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(hdr)]
    print("  ".join(h.ljust(w[i]) for i, h in enumerate(hdr)))
    for r in rows:
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))
    print("(ms; detection = fault -> backup 'session ended' log, for kill-backup -> primary's UNPROTECTED line; "
          "promotion = 'session ended' -> 'PROMOTED'; outage = longest gap between successful replies;\n"
          " resumed = fault -> end of the longest gap after it; retx wait = resumed - detection - promotion, "
          "the part that is the client's TCP retransmission timer)")
    for s in sums:
        if "promotion_target_met" in s:
            print("%s: promotion p99 %s ms (target <= %.0f: %s); outage p99 %s ms (target <= %.0f: %s); "
                  "lost acknowledged writes %d (target 0: %s)" % (
                      s["kind"], fmt(s["promotion_ms"]["p99"]), TARGET_PROMOTION_P99_MS,
                      "met" if s["promotion_target_met"] else "MISSED", fmt(s["outage_ms"]["p99"]),
                      TARGET_OUTAGE_P99_MS, "met" if s["outage_target_met"] else "MISSED",
                      s["lost_acked_writes"], "met" if s["lost_target_met"] else "MISSED"))


def print_matrix(sums):
    hdr = ("cell (side/phase/fault)", "runs", "ok", "in flight", "detect p50", "promote p50", "outage max", "acked",
           "lost", "conns ok", "serving at end", "wall s/run")
    rows = []
    for s in sums:
        inflight = "-"
        if "in_flight_runs" in s:
            inflight = "%d/%d" % (s["in_flight_runs"], s["runs"] - s["failed_runs"])
        rows.append((s["kind"], str(s["runs"]), "%d/%d" % (s["runs"] - s["violated_runs"], s["runs"]), inflight,
                     fmt(s["detection_ms"]["p50"]), fmt(s["promotion_ms"]["p50"]), fmt(s["outage_ms"]["max"]),
                     str(s["acked_writes"]), str(s["lost_acked_writes"]), "%d/%d" % (s["conns_survived"], s["conns"]),
                     ", ".join("%s x%d" % kv for kv in s["serving"].items()) or "-", fmt(s["wall_s"]["p50"])))
    w = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(hdr)]
    print("  ".join(h.ljust(w[i]) for i, h in enumerate(hdr)))
    for r in rows:
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))
    print("(ok = runs whose outcome matched the expectation; in flight = transmission runs whose fault landed with "
          "checkpoint stream unacknowledged by the backup; ms unless said; wall = one run, set-up to tear-down)")
    print("Expected per cell:")
    for s in sums:
        print("  %-31s %s" % (s["kind"], s["expected"]))
    bad = [(s["kind"], v) for s in sums for v in s["violations"]]
    print("Violations: %s" % ("none" if not bad else len(bad)))
    for kind, v in bad:
        print("  %s %s" % (kind, v))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", nargs="?", help="|".join(KINDS) + "|all, or several joined by commas; or matrix")
    ap.add_argument("--runs", type=int, help="runs per kind (default 20, the issue's benchmark) or per matrix cell "
                                             "(default 3)")
    ap.add_argument("--cells", help="matrix: only the cells whose name contains one of these comma-separated "
                                    "strings (e.g. backup/,/hang)")
    ap.add_argument("--sync-memory", default="4G", help="guest memory for the initial-sync phase (default 4G)")
    ap.add_argument("--sync-fraction", type=float, default=0.25,
                    help="initial-sync: inject once this fraction of memory was sent (default 0.25)")
    ap.add_argument("--inflight-kib", type=int, default=32,
                    help="transmission: inject once this much stream is unacknowledged by the backup (default 32)")
    ap.add_argument("--inflight-wait", type=float, default=10.0,
                    help="transmission: seconds to wait for a checkpoint in flight before injecting anyway")
    ap.add_argument("--bulk-conns", type=int, default=8, help="transmission: connections writing big values")
    ap.add_argument("--bulk-bytes", type=int, default=16000, help="transmission: bytes per big value")
    ap.add_argument("--bulk-depth", type=int, default=2, help="transmission: SETs in flight per big-value connection")
    ap.add_argument("--quick", action="store_true", help="1 run per kind")
    ap.add_argument("--build", default=os.path.join(REPO, "build"), help="build directory (cli/understudy, guest/kv.elf)")
    ap.add_argument("--json", help="also write the JSON summary to this file")
    ap.add_argument("--steady", type=float, default=3.0, help="seconds of protected traffic before the fault")
    ap.add_argument("--post", type=float, default=3.5, help="seconds of traffic after the fault / the promotion")
    ap.add_argument("--conns", type=int, default=2, help="client connections")
    ap.add_argument("--interval-ms", type=float, default=5.0, help="pause between a reply and the next SET")
    ap.add_argument("--reply-timeout", type=float, default=6.0, help="a connection is given up after this")
    ap.add_argument("--result-timeout", type=float, default=300.0,
                    help="seconds to wait for the client's read-back after the run (default 300)")
    ap.add_argument("--runs-json", help="write every run's figures to this file")
    ap.add_argument("--verbose", action="store_true", help="keep the logs' tails in the per-run JSON")
    # internal modes
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tag", help=argparse.SUPPRESS)
    ap.add_argument("--proxy", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--proxy-listen", help=argparse.SUPPRESS)
    ap.add_argument("--proxy-target", help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.client:
        return client_main(opts)
    if opts.proxy:
        return proxy_main(opts)
    if not opts.kind:
        ap.error("KIND is required")
    if os.geteuid() != 0:
        print("drill.py: needs root (namespaces, taps)", file=sys.stderr)
        return 2
    opts.build = os.path.abspath(opts.build)
    for f in ("cli/understudy", "guest/kv.elf"):
        if not os.path.exists(os.path.join(opts.build, f)):
            print("drill.py: %s missing; build the understudy and guest_kv targets" % os.path.join(opts.build, f),
                  file=sys.stderr)
            return 2
    if opts.kind == "matrix":
        scenarios = [sc for sc in MATRIX if not opts.cells or any(c in sc.label for c in opts.cells.split(","))]
        if not scenarios:
            ap.error("--cells matches no cell of the matrix")
        runs_per_kind = 1 if opts.quick else (opts.runs if opts.runs is not None else 3)
    else:
        kinds = KINDS if opts.kind == "all" else opts.kind.split(",")
        if any(k not in KINDS for k in kinds):
            ap.error("KIND: one of %s, all, or several joined by commas; or matrix" % ", ".join(KINDS))
        scenarios = [LEGACY[k] for k in kinds]
        runs_per_kind = 1 if opts.quick else (opts.runs if opts.runs is not None else 20)
    if runs_per_kind < 1:
        ap.error("--runs must be at least 1")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    started = now()
    all_runs, sums, counter = [], [], 0
    interrupted, sc, runs = False, None, []
    try:
        for sc in scenarios:
            runs = []
            for i in range(runs_per_kind):
                counter += 1
                r = one_run(sc, i, opts, counter)
                runs.append(r)
                all_runs.append(r)
                print("%-26s run %2d (%s s): %s" % (sc.label, i + 1, fmt(r["wall_s"]), "ERROR " + r["error"][:300]
                      if r.get("error") else
                      "detect %s  promote %s  promo->reply %s  outage %s (resumed %s after the fault)  acked %d lost %d  "
                      "conns %d/%d  serving %s%s%s" % (
                          fmt(r["detection_ms"]), fmt(r["promotion_ms"]), fmt(r["promoted_to_first_reply_ms"]),
                          fmt(r["outage_ms"]), fmt(r["resumed_ms"]), r["acked"], r["lost"],
                          r["conns_survived"], r["conns"], r["serving"],
                          "  in flight %s (%s bytes unacked, sampled %s ms before)" % (
                              r["in_flight"], r["stream_unacked_before"], r["stream_sample_age_ms"])
                          if "in_flight" in r else "",
                          "  VIOLATED: " + "; ".join(r["violations"]) if r["violations"] else "")), flush=True)
            sums.append(kind_summary(sc, runs))
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted; the current run's topology was removed", file=sys.stderr)
        if runs:
            sums.append(kind_summary(sc, runs))
    print()
    if opts.kind == "matrix":
        print_matrix(sums)
    else:
        print_table(sums)
    uname = os.uname()
    out = {"benchmark": "drill", "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "machine": "%s %s, %d cores" % (uname.sysname, uname.release, os.cpu_count()),
           "build": opts.build, "quick": opts.quick, "interrupted": interrupted, "seconds": round(now() - started, 1),
           "runs_per_kind": runs_per_kind,
           "settings": {"heartbeat_ms": 10, "failure_timeout_ms": 100, "conns": opts.conns,
                        "interval_ms": opts.interval_ms, "steady_s": opts.steady, "post_s": opts.post,
                        "sync_memory": opts.sync_memory, "sync_fraction": opts.sync_fraction,
                        "inflight_kib": opts.inflight_kib, "bulk_conns": opts.bulk_conns,
                        "bulk_bytes": opts.bulk_bytes, "bulk_depth": opts.bulk_depth},
           "target_promotion_p99_ms": TARGET_PROMOTION_P99_MS, "target_outage_p99_ms": TARGET_OUTAGE_P99_MS,
           "target_lost_acked_writes": 0, "kinds": sums}
    out.update(provenance())
    if opts.runs_json:
        with open(opts.runs_json, "w") as f:
            json.dump(all_runs, f, indent=1)
    line = json.dumps(out, separators=(",", ":"))
    if opts.json:
        with open(opts.json, "w") as f:
            f.write(line + "\n")
    print("JSON: " + line)
    return 1 if interrupted or any(s["violated_runs"] for s in sums) else 0


if __name__ == "__main__":
    sys.exit(main())
