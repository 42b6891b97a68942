#!/usr/bin/env python3
"""A single-connection RESP writer for the load suite (tests/load_cli.sh): for SECONDS it
writes unique keys with SET, one at a time, waiting for each reply (as fast as the
service answers), then reads every acknowledged key back with pipelined GETs.

Fails (exit 1) when the service stops answering for longer than --max-stall seconds,
when the connection breaks, or when an acknowledged write does not read back; prints
one JSON line: {"seconds","writes","rate_per_s","longest_gap_s","lost","error"}.

usage: load_writer.py HOST PORT SECONDS [--max-stall S] [--prefix P]
"""
import argparse
import json
import socket
import sys
import time


class Resp:
    def __init__(self, host, port, timeout):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        return out

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the service closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self):
        line = self.line()
        if line[:1] != b"$":
            return line
        n = int(line[1:])
        if n < 0:
            return None
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the service closed the connection")
            self.buf += chunk
        value, self.buf = self.buf[:n], self.buf[n + 2:]
        return value


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("seconds", type=float)
    ap.add_argument("--max-stall", type=float, default=5.0)
    ap.add_argument("--prefix", default="load")
    a = ap.parse_args()
    # A reply slower than the stall limit is a stall: the socket waits a little longer so
    # that the gap is measured, not cut short.
    acked, longest, error = [], 0.0, None
    start = last = time.monotonic()
    try:
        r = Resp(a.host, a.port, timeout=a.max_stall + 1)
        i = 0
        while time.monotonic() - start < a.seconds:
            key = "%s:%d" % (a.prefix, i)
            r.sock.sendall(r.send("SET", key, i))
            answer = r.line()
            now = time.monotonic()
            longest = max(longest, now - last)
            last = now
            if answer != b"+OK":
                error = "SET %s answered %r" % (key, answer[:80])
                break
            acked.append(i)
            if longest > a.max_stall:
                error = "no reply for %.1f s after %d writes" % (longest, len(acked))
                break
            i += 1
    except (OSError, ConnectionError) as e:
        error = "after %d writes, %.1f s in: %s" % (len(acked), time.monotonic() - start, e)
    elapsed = time.monotonic() - start
    lost = 0
    if error is None:
        try:
            for at in range(0, len(acked), 512):  # pipelined read-back
                chunk = acked[at:at + 512]
                r.sock.sendall(b"".join(r.send("GET", "%s:%d" % (a.prefix, n)) for n in chunk))
                for n in chunk:
                    if r.reply() != str(n).encode():
                        lost += 1
        except (OSError, ConnectionError) as e:
            error = "read-back: %s" % e
    print(json.dumps({"seconds": round(elapsed, 1), "writes": len(acked), "rate_per_s": round(len(acked) / elapsed, 1),
                      "longest_gap_s": round(longest, 3), "lost": lost, "error": error}))
    return 0 if error is None and lost == 0 and acked else 1


if __name__ == "__main__":
    sys.exit(main())
