#!/usr/bin/env python3
"""Runs an MTA inside the network namespace it is started in, holds scripted SMTP
dialogues with it on 127.0.0.1:25, and prints a transcript.

usage: dialogue_probe.py SCRIPT COMMAND [ARG]...

SCRIPT holds the dialogues, separated by blank lines; each line is sent as a command
(CRLF added) and its reply read. A line `<DATA>` sends a small message ending with the
final dot. COMMAND's output goes to the file named by PROBE_LOG. After the dialogues the
MTA delivers until its log has been quiet for 2 s, then gets SIGTERM.
"""
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe_util import loopback_up, reply, stop  # noqa: E402

MESSAGE = b"Subject: probe\r\nFrom: x@client.example\r\n\r\nbody line\r\n..leading dot\r\n\r\n.\r\n"


def main():
    loopback_up()
    with open(sys.argv[1]) as f:
        dialogues = [b.strip("\n").split("\n") for b in f.read().split("\n\n") if b.strip()]
    with open(os.environ["PROBE_LOG"], "wb") as log:
        mta = subprocess.Popen(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and mta.poll() is None:
            try:
                s = socket.create_connection(("127.0.0.1", 25), timeout=0.2)
            except OSError:
                time.sleep(0.05)
                continue
            # A session that ends as the others do (a close with the banner unread would
            # end it with a reset or an EOF, by chance).
            s.settimeout(15)
            f = s.makefile("rb")
            reply(f)
            s.sendall(b"QUIT\r\n")
            reply(f)
            s.close()
            break
        time.sleep(0.5)
        out = []
        for lines in dialogues:
            out.append("==")
            try:
                s = socket.create_connection(("127.0.0.1", 25), timeout=2)
            except OSError as e:
                out.append("<%s>" % type(e).__name__)
                continue
            s.settimeout(15)
            f = s.makefile("rb")
            try:
                out.extend("S: " + l for l in reply(f))
                for line in lines:
                    out.append("C: " + line)
                    s.sendall(MESSAGE if line == "<DATA>" else (line + "\r\n").encode())
                    r = reply(f)
                    out.extend("S: " + l for l in r)
                    if r[-1] == "<closed>":
                        break
            except OSError as e:
                out.append("<%s>" % type(e).__name__)
            s.close()
        # Deliveries end when the log has been quiet for 2 s (within 30 s).
        quiet_since, size, end = time.monotonic(), -1, time.monotonic() + 30
        while time.monotonic() < end:
            now_size = os.path.getsize(os.environ["PROBE_LOG"])
            if now_size != size:
                size, quiet_since = now_size, time.monotonic()
            elif time.monotonic() - quiet_since >= 2:
                break
            time.sleep(0.1)
        stop(mta)
    print("\n".join(out))


main()
