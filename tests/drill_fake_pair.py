#!/usr/bin/python3
"""ctest drill_fake_pair: `understudy drill` against a stand-in pair, without KVM.

The stand-ins speak the real interfaces: two control sockets answering {"cmd":"status"}
with status objects of format 1 (docs/status.md), a fake primary that is a process of
its own (so that the drill's SIGKILL really kills it) and answers the corrupt-link
action, and a RESP key-value service on loopback that the drill's client writes to.
When the fake primary dies, the fake backup goes `promoting`, then runs (`promoted`,
`last_failover` set) while the service holds its replies for the "outage".

Checks the verdicts and the exit codes: a clean kill-primary passes (0); one where the
service forgets recent writes at the fault fails (5) with writes_lost > 0; corrupt-link
passes with the primary as survivor; a promoted service that stops answering during the
watch, or whose SELFCHECK reports broken data structures, fails (5); and the refusals
(2, 3) for bad usage, sockets that do not answer, a pair that is not protected and a pid
that is not on this host.

usage: drill_fake_pair.py BUILD_DIR
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time


def status_object(pid, role, state, active, promoted=False, reason="", last_failover=None, verification=None):
    q = {"last": None, "p50": None, "p99": None, "count": 0}
    return {"format": 1, "name": "fake", "pid": pid, "uptime_s": 1.0, "role": role, "promoted": promoted,
            "state": state, "reason": reason, "state_age_s": 0.5, "healthy": True, "active_primary": active,
            "epoch": {"captured": 7, "acknowledged": 7, "rate_per_s": 40.0},
            "checkpoint": {"pause_s": q, "ack_s": q, "dirty_pages": q, "initial_pause_s": None},
            "sync": {"round": 0, "bytes_sent": 0, "bytes_total": 0},
            "replication": {"raw_bytes": 0, "wire_bytes": 0, "raw_bytes_per_s": 0.0, "wire_bytes_per_s": 0.0},
            "lag": {"epochs": None, "seconds": None}, "output": None, "heartbeats": None,
            "failovers": {"handover": 0, "primary_connection_lost": 0, "primary_silent": 1 if promoted else 0},
            "protection_lost": {"backup_connection_lost": 0, "backup_silent": 0, "error": 0},
            "sessions": 1, "last_failover": last_failover,
            "verification": verification or {"match": 0, "mismatch": 0, "unanswered": 0, "last": None}}


def serve_control(path, answer):
    """A control socket at PATH: each request line is answered with answer(request dict)."""
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(16)

    def client(c):
        buf = b""
        with c:
            while True:
                chunk = c.recv(4096)
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    c.sendall((json.dumps(answer(json.loads(line))) + "\n").encode())

    def loop():
        while True:
            c, _ = srv.accept()
            threading.Thread(target=client, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return srv


def fake_primary(path, state):
    """The fake primary process: protected until a corrupt-link drill, then unprotected."""
    # "protected-elsewhere": a protected primary whose pid is no process here (another host).
    # "protected-differs": its verification passes find page 4000 different.
    st = {"state": state.split("-")[0], "verification": None}
    pid = 4194301 if state.endswith("-elsewhere") else os.getpid()
    differs = state.endswith("-differs")

    def verified():
        time.sleep(0.2)  # the pass runs over a few checkpoints
        st["verification"] = {"match": 0 if differs else 1, "mismatch": 1 if differs else 0, "unanswered": 0,
                              "last": {"pass": 1, "verdict": "mismatch" if differs else "match", "first_checkpoint": 8,
                                       "last_checkpoint": 15, "pages": 32768, "differing_pages": 1 if differs else 0,
                                       "first_differing": [4000] if differs else [], "state_differs": "",
                                       "finished_unix_s": time.time()}}

    def answer(req):
        if req.get("cmd") == "status":
            return {"ok": True, "status": status_object(pid, "primary", st["state"], True, verification=st["verification"])}
        if req.get("cmd") == "verify":
            threading.Thread(target=verified, daemon=True).start()
            return {"ok": True, "pass": 1}
        if req.get("cmd") == "drill" and req.get("fault") == "corrupt-link":
            t = time.time()
            threading.Timer(0.08, lambda: st.update(state="unprotected")).start()
            return {"ok": True, "fault": "corrupt-link", "flipped_unix_s": t}
        return {"ok": False, "error": "unknown"}

    serve_control(path, answer)
    print("READY", flush=True)
    while True:
        time.sleep(1)


class Service:
    """A RESP key-value service (SET, GET) on loopback; can hold replies (an outage) and
    forget the writes of the last `forget_s` seconds (a pair that loses acknowledged writes)."""

    def __init__(self):
        self.data, self.written = {}, {}  # key -> value, key -> time written
        self.lock = threading.Lock()
        self.hold_until = 0.0
        self.selfcheck_reply = None  # SELFCHECK's answer; None: "+OK keys=N free=0"
        self.clients = []
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(64)
        self.port = self.srv.getsockname()[1]
        threading.Thread(target=self.loop, daemon=True).start()

    def forget_recent(self, seconds):
        with self.lock:
            cut = time.time() - seconds
            for k in [k for k, t in self.written.items() if t >= cut]:
                del self.data[k]

    def loop(self):
        while True:
            c, _ = self.srv.accept()
            with self.lock:
                self.clients.append(c)
            threading.Thread(target=self.client, args=(c,), daemon=True).start()

    def reset_connections(self):
        """Every open connection reset (what a failover must not do to clients)."""
        with self.lock:
            for c in self.clients:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.clients = []

    def client(self, c):
        f = c.makefile("rb")
        with c:
            while True:
                line = f.readline()
                if not line:
                    return
                n = int(line[1:])
                args = []
                for _ in range(n):
                    size = int(f.readline()[1:])
                    args.append(f.read(size + 2)[:-2].decode())
                while time.time() < self.hold_until:
                    time.sleep(0.005)
                with self.lock:
                    if args[0] == "SET":
                        self.data[args[1]], self.written[args[1]] = args[2], time.time()
                        out = b"+OK\r\n"
                    elif args[0] == "GET":
                        v = self.data.get(args[1])
                        out = b"$-1\r\n" if v is None else b"$%d\r\n%s\r\n" % (len(v), v.encode())
                    elif args[0] == "SELFCHECK":
                        out = self.selfcheck_reply or b"+OK keys=%d free=0\r\n" % len(self.data)
                    else:
                        out = b"-ERR unknown\r\n"
                try:
                    c.sendall(out)
                except OSError:
                    return


class Pair:
    """A fake primary process, a fake backup in this process, and the service."""

    def __init__(self, tmp, tag, primary_state="protected", forget_s=0.0, reset=False, backup_lost_after=None,
                 stall_after=None):
        self.psock, self.bsock = os.path.join(tmp, tag + "-p.sock"), os.path.join(tmp, tag + "-b.sock")
        self.service = Service()
        self.primary = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--fake-primary", self.psock,
                                         primary_state], stdout=subprocess.PIPE, text=True)
        assert self.primary.stdout.readline().strip() == "READY"
        self.backup = {"state": "receiving", "promoted": False, "last_failover": None}
        self.forget_s, self.reset, self.stall_after = forget_s, reset, stall_after
        serve_control(self.bsock, self.backup_answer)
        threading.Thread(target=self.watch, daemon=True).start()
        if backup_lost_after is not None:  # the backup's session ends by itself (a spurious timeout)
            threading.Timer(backup_lost_after, lambda: self.backup.update(state="waiting")).start()

    def backup_answer(self, req):
        b = self.backup
        role = "primary" if b["promoted"] else "backup"
        return {"ok": True, "status": status_object(os.getpid(), role, b["state"], b["promoted"] and b["state"] != "promoting",
                                                    b["promoted"], last_failover=b["last_failover"])}

    def watch(self):
        """The backup's failure detector: the primary's death, noticed ~100 ms later."""
        self.primary.wait()
        t_dead = time.time()
        self.service.hold_until = t_dead + 0.3  # clients wait through the failover
        if self.forget_s:
            self.service.forget_recent(self.forget_s)
        if self.reset:
            self.service.reset_connections()
        time.sleep(0.1)
        detected = time.time()
        self.backup.update(state="promoting", promoted=True,
                           last_failover={"reason": "primary_silent", "detected_unix_s": detected, "running_unix_s": None})
        time.sleep(0.02)
        running = time.time()
        self.backup.update(state="unprotected",
                           last_failover={"reason": "primary_silent", "detected_unix_s": detected, "running_unix_s": running})
        if self.stall_after is not None:  # the promoted service stops answering a little later
            time.sleep(self.stall_after)
            self.service.hold_until = time.time() + 3.0

    def end(self):
        if self.primary.poll() is None:
            self.primary.kill()
            self.primary.wait()


def drill(cli, args):
    r = subprocess.run([cli, "drill"] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    return r.returncode, r.stdout, r.stderr


def drill_pair(cli, pair, kind, extra):
    """One drill against PAIR: exit code, the JSON report ({} if none), stdout, stderr."""
    rc, out, err = drill(cli, [kind, "--primary-socket", pair.psock, "--backup-socket", pair.bsock,
                               "--service", "127.0.0.1:%d" % pair.service.port] + extra)
    try:
        report = json.loads(out)
    except ValueError:
        report = {}
    return rc, report, out, err


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "--fake-primary":
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        return fake_primary(sys.argv[2], sys.argv[3])
    cli = os.path.join(os.path.abspath(sys.argv[1]), "cli", "understudy")
    failures = []
    passed = 0

    def check(name, ok, detail=""):
        nonlocal passed
        if ok:
            passed += 1
        else:
            failures.append(name + ": " + detail)
        print("%s %s" % ("ok  " if ok else "FAIL", name), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        quick = ["--warmup", "0.5", "--after", "1", "--json"]

        # Usage and reachability refusals: one line on stderr, exit 2 or 3.
        for name, args, want in [
            ("unknown kind", ["explode", "--primary-socket", "a", "--backup-socket", "b", "--service", "h:1"], 2),
            ("missing --backup-socket", ["kill-primary", "--primary-socket", "a", "--service", "h:1"], 2),
            ("partition without --partition-command",
             ["partition", "--primary-socket", "a", "--backup-socket", "b", "--service", "h:1"], 2),
            ("bad --service", ["kill-primary", "--primary-socket", "a", "--backup-socket", "b", "--service", "nope"], 2),
            ("--connections 0", ["kill-primary", "--primary-socket", "a", "--backup-socket", "b", "--service", "h:1",
                                 "--connections", "0"], 2),
            ("no socket", ["kill-primary", "--primary-socket", os.path.join(tmp, "none.sock"), "--backup-socket",
                           os.path.join(tmp, "none2.sock"), "--service", "127.0.0.1:1"], 3),
        ]:
            rc, out, err = drill(cli, args)
            check(name, rc == want and err.count("\n") == 1 and out == "", "exit %d, stderr %r" % (rc, err))

        # A pair that is not protected is refused (2).
        p = Pair(tmp, "unprot", primary_state="unprotected")
        rc, r, out, err = drill_pair(cli, p, "kill-primary", quick)
        check("unprotected primary refused", rc == 2 and "not an active, protected primary" in err and p.primary.poll() is None,
              "exit %d, %r" % (rc, err))
        p.end()

        # Protection lost during the warmup: refused before any fault (2), the primary alive.
        p = Pair(tmp, "lost", backup_lost_after=1.0)
        rc, r, out, err = drill_pair(cli, p, "kill-primary", ["--warmup", "3", "--after", "1", "--json"])
        check("protection lost in the warmup refused", rc == 2 and "after the warmup, before any fault" in err and
              "receives no checkpoints" in err and p.primary.poll() is None, "exit %d, %r" % (rc, err))
        p.end()

        # A signal kind against a primary on another host is refused (2).
        p = Pair(tmp, "elsewhere", primary_state="protected-elsewhere")
        rc, r, out, err = drill_pair(cli, p, "hang-primary", quick)
        check("primary on another host refused", rc == 2 and "is not a process of this host" in err,
              "exit %d, %r" % (rc, err))
        p.end()

        # A clean kill-primary: pass.
        p = Pair(tmp, "clean")
        rc, r, out, err = drill_pair(cli, p, "kill-primary", quick)
        check("kill-primary passes", rc == 0 and r.get("verdict") == "pass", "exit %d, %s %s" % (rc, out, err))
        check("kill-primary killed the primary", p.primary.poll() == -signal.SIGKILL, str(p.primary.poll()))
        check("kill-primary figures", r.get("writes_lost") == 0 and r.get("writes_acknowledged", 0) > 0 and
              r.get("survivor") == "backup" and r.get("connections_survived") is True and
              r.get("detection_source", "").endswith("status.last_failover") and
              80 <= (r.get("detection_ms") or 0) <= 400 and 10 <= (r.get("promotion_ms") or 0) <= 100 and
              250 <= (r.get("outage_ms") or 0) <= 2000, out)
        check("kill-primary watched the survivor and asked SELFCHECK", r.get("service_stopped", "") is None and
              0.9 <= (r.get("watched_s") or 0) <= 5 and (r.get("selfcheck") or "").startswith("+OK keys="), out)
        check("kill-primary verified the replica before the fault", r.get("verification_verdict") == "match" and
              "the replica matches the VM" in (r.get("verification") or ""), out)
        p.end()

        # Before the fault, the replica is found to differ from the VM: fail (5).
        p = Pair(tmp, "differs", primary_state="protected-differs")
        rc, r, out, err = drill_pair(cli, p, "kill-primary", quick)
        check("a replica that differs before the fault fails the drill", rc == 5 and
              r.get("verification_verdict") == "mismatch" and
              any("replica differed from the VM" in x and "page index 4000" in x for x in r.get("reasons", [])),
              "exit %d, %s %s" % (rc, out, err))
        p.end()

        # The promoted service stops answering during the watch: fail (5).
        p = Pair(tmp, "stall", stall_after=0.5)
        rc, r, out, err = drill_pair(cli, p, "kill-primary", ["--warmup", "0.5", "--after", "4", "--max-stall", "1", "--json"])
        check("a survivor that stops serving fails the drill", rc == 5 and
              "answered no write" in (r.get("service_stopped") or "") and (r.get("watched_s") or 99) < 3.5 and
              any("stopped serving" in x for x in r.get("reasons", [])), "exit %d, %s %s" % (rc, out, err))
        p.end()

        # The service's self-check finds its data structures broken: fail (5).
        p = Pair(tmp, "selfcheck")
        p.service.selfcheck_reply = b"-ERR selfcheck: an entry in another key's bucket (3)\r\n"
        rc, r, out, err = drill_pair(cli, p, "kill-primary", quick)
        check("a failed self-check fails the drill", rc == 5 and r.get("writes_lost") == 0 and
              (r.get("selfcheck") or "").startswith("-ERR selfcheck") and
              any("self-check failed" in x for x in r.get("reasons", [])), "exit %d, %s %s" % (rc, out, err))
        p.end()

        # The same, but the service forgets the writes of the last 300 ms at the fault: fail (5).
        p = Pair(tmp, "lossy", forget_s=0.3)
        rc, r, out, err = drill_pair(cli, p, "kill-primary", quick)
        check("lost writes fail the drill", rc == 5 and r.get("verdict") == "fail" and r.get("writes_lost", 0) > 0 and
              any("acknowledged writes lost" in x for x in r.get("reasons", [])), "exit %d, %s" % (rc, out))
        p.end()

        # Connections reset at the failover: nothing lost, but the drill fails (5).
        p = Pair(tmp, "reset", reset=True)
        rc, r, out, err = drill_pair(cli, p, "kill-primary", quick)
        check("broken connections fail the drill", rc == 5 and r.get("writes_lost") == 0 and
              r.get("connections_survived") is False and r.get("connections_broken", 0) >= 1 and
              r.get("reconnects", 0) >= 1 and any("did not survive" in x for x in r.get("reasons", [])),
              "exit %d, %s" % (rc, out))
        p.end()

        # corrupt-link: the primary flips, turns unprotected and serves on.
        p = Pair(tmp, "corrupt")
        rc, r, out, err = drill_pair(cli, p, "corrupt-link", quick)
        check("corrupt-link passes", rc == 0 and r.get("verdict") == "pass" and r.get("survivor") == "primary" and
              r.get("writes_lost") == 0 and 60 <= (r.get("detection_ms") or 0) <= 400 and p.primary.poll() is None,
              "exit %d, %s %s" % (rc, out, err))
        p.end()

        # SIGINT during the drill ends it early, with its report (exit 5, "interrupted").
        p = Pair(tmp, "intr")
        t0 = time.time()
        d = subprocess.Popen([cli, "drill", "kill-primary", "--primary-socket", p.psock, "--backup-socket", p.bsock,
                              "--service", "127.0.0.1:%d" % p.service.port, "--warmup", "0.5", "--after", "60",
                              "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2.5)
        d.send_signal(signal.SIGINT)
        out, err = d.communicate(timeout=60)
        try:
            r = json.loads(out)
        except ValueError:
            r = {}
        check("SIGINT ends the drill with a report", d.returncode == 5 and time.time() - t0 < 20 and
              any("interrupted" in x for x in r.get("reasons", [])) and r.get("writes_lost") == 0,
              "exit %d, %s %s" % (d.returncode, out, err))
        p.end()

        # The table for people (no --json).
        p = Pair(tmp, "table")
        rc, r, out, err = drill_pair(cli, p, "kill-primary", ["--warmup", "0.3", "--after", "0.5"])
        check("table report", rc == 0 and out.startswith("drill kill-primary: PASS\n") and "writes" in out, out + err)
        p.end()

    print("%d passed, %d failed" % (passed, len(failures)))
    for f in failures:
        print("  " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
