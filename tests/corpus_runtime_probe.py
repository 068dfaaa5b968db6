#!/usr/bin/env python3
"""Runs an MTA on one configuration inside the network namespace it is started in, and
prints what clients see, as a transcript.

usage: corpus_runtime_probe.py COMMAND [ARG]...

Brings the namespace's loopback interface up, starts COMMAND (its output goes to the file
named by PROBE_LOG), waits until it accepts connections on one of the ports of
PROBE_PORTS (or exits), then on each port, over 127.0.0.1 and ::1, reads the banner and
sends the lines of one plain dialogue, recording every reply. Finally it stops the MTA
with SIGTERM. The transcript starts with `running`, or `exited STATUS` for an MTA that
ended on its own; then for each address and port that answered, `== ADDRESS port PORT`
followed by the `S: ` reply lines and `C: ` command lines in order.
"""
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe_util import loopback_up, reply, stop  # noqa: E402


DIALOGUE = [
    "EHLO client.example",
    "MAIL FROM:<someone@client.example>",
    "RCPT TO:<root@localhost>",
    "RCPT TO:<nobody@elsewhere.example>",
    "QUIT",
]


def accepting(ports):
    for port in ports:
        for host in ("127.0.0.1", "::1"):
            try:
                socket.create_connection((host, port), timeout=0.2).close()
                return True
            except OSError:
                pass
    return False


def main():
    loopback_up()
    ports = [int(p) for p in os.environ["PROBE_PORTS"].split()]
    with open(os.environ["PROBE_LOG"], "wb") as log:
        mta = subprocess.Popen(sys.argv[1:], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and mta.poll() is None and not accepting(ports):
            time.sleep(0.05)
        # An MTA whose start fails after it bound its ports (a filter program that cannot
        # start) has time to end before it is probed.
        time.sleep(1.0)
        running = mta.poll() is None
        out = ["running" if running else "exited %d" % mta.returncode]
        for port in ports if running else []:
            for host in ("127.0.0.1", "::1"):
                try:
                    s = socket.create_connection((host, port), timeout=2)
                except OSError:
                    continue
                s.settimeout(15)
                f = s.makefile("rb")
                out.append("== %s port %d" % (host, port))
                try:
                    out.extend("S: " + l for l in reply(f))
                    for line in DIALOGUE:
                        s.sendall((line + "\r\n").encode())
                        out.append("C: " + line)
                        out.extend("S: " + l for l in reply(f))
                except OSError as e:
                    out.append("<%s>" % type(e).__name__)
                s.close()
        stop(mta)
    print("\n".join(out))


main()
