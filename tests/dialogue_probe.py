#!/usr/bin/env python3
"""Runs an MTA inside the network namespace it is started in, holds scripted SMTP
dialogues with it on 127.0.0.1:25, and prints a transcript.

usage: dialogue_probe.py SCRIPT COMMAND [ARG]...

SCRIPT holds the dialogues, separated by blank lines; each line is sent as a command
(CRLF added) and its reply read. A line `<DATA>` sends a small message ending with the
final dot; `<DATA:NAME>` one of the other messages of MESSAGES (no headers, a long line,
bare LFs, 8-bit text, a full set of headers, a large body). `<SLEEP:N>` waits N seconds
(and is not written in the transcript). A dialogue whose first line is `<FROM:ADDR>`
connects from that loopback address, one (first or second) `<TO:ADDR:PORT>` to that
address and port instead of 127.0.0.1:25 (both written in the transcript). A dialogue
`<SENDMAIL:NAME ARGS>` runs the command PROBE_SENDMAIL with ARGS instead, message NAME of
LOCAL_MESSAGES on its standard input (its output and exit status in the transcript). COMMAND's output goes to the file named by PROBE_LOG. After the dialogues the
MTA delivers until its log has been quiet for PROBE_QUIET seconds (2 by default), then
gets SIGTERM.

With PROBE_SINK=ADDR:PORT, a next hop listens there for relayed mail: it refuses RCPTs
whose local part is `temp` (451) or `perm` (550), takes the others, and what it was sent
is printed after the transcript, behind a line `== sink`, each session from a line
`<connect from ADDR>` naming the address it came from, the sessions one after the other
in the order they began.

With PROBE_DNS=FILE, a DNS server answers on 127.0.0.1:53 (UDP) from FILE's lines
`NAME TYPE VALUE` (types A, MX as `PREF HOST`, PTR); a name it does not hold gets
NXDOMAIN, another type of a name it holds an empty answer, a name with a line
`NAME SERVFAIL -` a SERVFAIL for every type.

With PROBE_CTL=COMMAND (smtpctl and its first arguments, split on spaces) and
PROBE_CTL_RUN (`;`-separated smtpctl commands), those commands run once the log is quiet,
before the MTA is stopped; each one's output follows a line `== ctl COMMAND`. In a
command, EVPID and MSGID stand for the first envelope `show queue` printed last, and its
message. The word `<QUIET>` in their place prints nothing and waits until the log has
been quiet again (for what the commands set going to be logged before the MTA stops).
"""
import os
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe_util import loopback_up, reply, stop  # noqa: E402

MESSAGE = b"Subject: probe\r\nFrom: x@client.example\r\n\r\nbody line\r\n..leading dot\r\n\r\n.\r\n"
MESSAGES = {
    "bare": b"just a body, no header\r\n.\r\n",
    "longline": b"Subject: long\r\n\r\n" + b"x" * 1500 + b"\r\nafter\r\n.\r\n",
    "lf": b"Subject: bare lf\r\n\r\nline one\nline two\r\n.\r\n",
    "8bit": "Subject: caf\u00e9\r\nFrom: x@client.example\r\n\r\nna\u00efve\r\n.\r\n".encode(),
    "headers": b"Return-Path: <forged@elsewhere.example>\r\n"
    b"Received: from old.example by older.example; Sun, 1 Nov 2026 10:00:00 +0000\r\n"
    b"Date: Sun, 1 Nov 2026 10:00:00 +0000\r\nMessage-ID: <kept@client.example>\r\n"
    b"From: x@client.example\r\nTo: nobody@localhost\r\nSubject: folded\r\n line\r\n"
    b"\r\nbody\r\n.\r\n",
    "big": b"Subject: big\r\n\r\n" + (b"y" * 78 + b"\r\n") * 40 + b".\r\n",
}
# Messages handed to sendmail on its standard input (LF line ends, no final dot).
LOCAL_MESSAGES = {
    "cron": b"To: nobody, backup\nCc: Root <root>\nSubject: cron job\n\nit ran\n.dot line\n",
    "plain": b"Subject: no recipients in the header\nFrom: Someone <someone>\n\nbody\n",
    "dated": b"Date: Sun, 1 Nov 2026 10:00:00 +0000\nMessage-ID: <kept@client.example>\n"
    b"To: nobody@localhost\nSubject: dated\n\nbody\n",
}


class Sink:
    """A next hop on loopback that records every line it is sent."""

    def __init__(self, address):
        host, port = address.rsplit(":", 1)
        self.server = socket.create_server((host, int(port)))
        # Each session's lines, in the order the sessions began.
        self.sessions = []
        self.lock = threading.Lock()
        # Sessions not yet ended: the transcript waits for them once the MTA is stopped.
        self.active = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def note(self, lines, line):
        with self.lock:
            lines.append(line)

    def serve(self):
        for _ in range(50):
            try:
                conn, peer = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self.session, args=(conn, peer[0]), daemon=True).start()

    def session(self, conn, peer):
        with self.lock:
            self.active += 1
        try:
            self.dialogue(conn, peer)
        finally:
            with self.lock:
                self.active -= 1

    def dialogue(self, conn, peer):
        conn.settimeout(30)
        f = conn.makefile("rb")
        lines = []
        with self.lock:
            self.sessions.append(lines)

        def send(text):
            conn.sendall(text.encode() + b"\r\n")

        try:
            self.note(lines, "<connect from %s>" % peer)
            send("220 sink.example ESMTP")
            for _ in range(500):
                line = f.readline()
                if not line:
                    break
                cmd = line.decode(errors="replace").rstrip("\r\n")
                self.note(lines, "C: " + cmd)
                verb = cmd.split(" ", 1)[0].upper()
                if verb in ("EHLO", "HELO"):
                    send("250-sink.example\r\n250 8BITMIME")
                elif verb == "RCPT":
                    local = cmd.split("<", 1)[-1].split("@", 1)[0].lower()
                    if local == "temp":
                        send("451 4.2.0 try later")
                    elif local == "perm":
                        send("550 5.1.1 no such user")
                    else:
                        send("250 2.1.5 ok")
                elif verb == "DATA":
                    send("354 go on")
                    for _ in range(10000):
                        body = f.readline()
                        if not body or body == b".\r\n":
                            break
                        self.note(lines, "D: " + body.decode(errors="replace").rstrip("\r\n"))
                    send("250 2.0.0 queued")
                elif verb == "QUIT":
                    send("221 2.0.0 bye")
                    break
                else:
                    send("250 2.0.0 ok")
        except OSError as e:
            self.note(lines, "<%s>" % type(e).__name__)
        conn.close()
        self.note(lines, "<close>")


class Dns:
    """A tiny authoritative DNS server on 127.0.0.1:53 for the names of a zone file."""

    TYPES = {"A": 1, "PTR": 12, "MX": 15, "SERVFAIL": 0}

    def __init__(self, path):
        self.records = {}
        with open(path) as f:
            for line in f:
                parts = line.split(None, 2)
                if len(parts) == 3:
                    name, rtype, value = parts
                    key = (name.rstrip(".").lower(), self.TYPES[rtype])
                    self.records.setdefault(key, []).append(value.strip())
        self.names = {n for n, _ in self.records}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 53))
        threading.Thread(target=self.serve, daemon=True).start()

    @staticmethod
    def encode_name(name):
        out = b""
        for label in name.rstrip(".").split("."):
            out += bytes([len(label)]) + label.encode()
        return out + b"\0"

    def rdata(self, rtype, value):
        if rtype == 1:
            return socket.inet_aton(value)
        if rtype == 15:
            pref, host = value.split()
            return int(pref).to_bytes(2, "big") + self.encode_name(host)
        return self.encode_name(value)

    def answer(self, query):
        qid, flags = query[0:2], int.from_bytes(query[2:4], "big")
        at, labels = 12, []
        for _ in range(64):
            n = query[at]
            at += 1
            if n == 0:
                break
            labels.append(query[at:at + n].decode(errors="replace"))
            at += n
        qtype = int.from_bytes(query[at:at + 2], "big")
        question = query[12:at + 4]
        name = ".".join(labels).lower()
        found = self.records.get((name, qtype), [])
        rcode = 0 if name in self.names else 3
        if (name, 0) in self.records:
            rcode, found = 2, []
        head = qid + (0x8480 | (flags & 0x0100) | rcode).to_bytes(2, "big")
        head += (1).to_bytes(2, "big") + len(found).to_bytes(2, "big") + b"\0\0\0\0"
        body = question
        for value in found:
            data = self.rdata(qtype, value)
            body += b"\xc0\x0c" + qtype.to_bytes(2, "big") + b"\0\x01"
            body += (300).to_bytes(4, "big") + len(data).to_bytes(2, "big") + data
        return head + body

    def serve(self):
        for _ in range(100000):
            try:
                query, peer = self.sock.recvfrom(512)
                self.sock.sendto(self.answer(query), peer)
            except (OSError, IndexError, ValueError):
                continue


def sendmail(line):
    """Runs `<SENDMAIL:NAME ARGS>`: PROBE_SENDMAIL (split on spaces) with ARGS (split on
    spaces), message NAME of LOCAL_MESSAGES on its standard input; its output and exit
    status for the transcript."""
    name, _, args = line[10:-1].partition(" ")
    out = ["C: " + line]
    try:
        r = subprocess.run(os.environ["PROBE_SENDMAIL"].split() + args.split(),
                           input=LOCAL_MESSAGES[name], capture_output=True, timeout=20)
        out.extend("S: " + l for l in r.stdout.decode(errors="replace").splitlines())
        out.extend("E: " + l for l in r.stderr.decode(errors="replace").splitlines())
        out.append("<exit %d>" % r.returncode)
    except (OSError, subprocess.TimeoutExpired) as e:
        out.append("<%s>" % type(e).__name__)
    return out


def main():
    loopback_up()
    if os.environ.get("PROBE_DNS"):
        # Resolvers skip IPv4 lookups (AI_ADDRCONFIG) while only loopback has an address.
        for cmd in (["ip", "link", "add", "pv0", "type", "veth", "peer", "name", "pv1"],
                    ["ip", "addr", "add", "192.0.2.10/24", "dev", "pv0"],
                    ["ip", "link", "set", "pv0", "up"], ["ip", "link", "set", "pv1", "up"]):
            subprocess.run(cmd, check=True)
        Dns(os.environ["PROBE_DNS"])
    sink = Sink(os.environ["PROBE_SINK"]) if os.environ.get("PROBE_SINK") else None
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
            if lines and lines[0].startswith("<SENDMAIL:"):
                out.extend(sendmail(lines[0]))
                continue
            source, target = None, ("127.0.0.1", 25)
            for _ in range(2):
                if lines and lines[0].startswith("<FROM:"):
                    source = (lines[0][6:-1], 0)
                    out.append("<from %s>" % source[0])
                    lines = lines[1:]
                elif lines and lines[0].startswith("<TO:"):
                    host, port = lines[0][4:-1].rsplit(":", 1)
                    target = (host, int(port))
                    out.append("<to %s>" % lines[0][4:-1])
                    lines = lines[1:]
            try:
                s = socket.create_connection(target, timeout=2, source_address=source)
            except OSError as e:
                out.append("<%s>" % type(e).__name__)
                continue
            s.settimeout(15)
            f = s.makefile("rb")
            try:
                out.extend("S: " + l for l in reply(f))
                for line in lines:
                    if line.startswith("<SLEEP:"):
                        time.sleep(float(line[7:-1]))
                        continue
                    out.append("C: " + line)
                    if line == "<DATA>":
                        s.sendall(MESSAGE)
                    elif line.startswith("<DATA:"):
                        s.sendall(MESSAGES[line[6:-1]])
                    else:
                        s.sendall((line + "\r\n").encode())
                    r = reply(f)
                    out.extend("S: " + l for l in r)
                    if r[-1] == "<closed>":
                        break
            except OSError as e:
                out.append("<%s>" % type(e).__name__)
            s.close()
        # Deliveries end when the log has been quiet for a while (within 60 s).
        wait_quiet()
        ctl = os.environ.get("PROBE_CTL", "").split()
        evpid = "0"
        for command in filter(None, os.environ.get("PROBE_CTL_RUN", "").split(";")):
            if command.strip() == "<QUIET>":
                wait_quiet()
                continue
            out.append("== ctl " + command)
            words = [evpid if w == "EVPID" else evpid[:8] if w == "MSGID" else w
                     for w in command.split()]
            try:
                r = subprocess.run(ctl + words, capture_output=True, timeout=20)
                text = r.stdout.decode(errors="replace")
                if command.strip() == "show queue" and "|" in text:
                    evpid = text.split("|", 1)[0]
                out.extend(text.splitlines())
                out.extend("E: " + l for l in r.stderr.decode(errors="replace").splitlines())
                out.append("<exit %d>" % r.returncode)
            except (OSError, subprocess.TimeoutExpired) as e:
                out.append("<%s>" % type(e).__name__)
        stop(mta)
    # The MTA's sessions with the next hop end with it: their ends are recorded before the
    # next hop's part is printed (within 2 s).
    for _ in range(40):
        if sink is None or sink.active == 0:
            break
        time.sleep(0.05)
    if sink is not None:
        out.append("== sink")
        with sink.lock:
            for lines in sink.sessions:
                out.extend(lines)
    print("\n".join(out))


def wait_quiet():
    """Returns once the MTA's log has not grown for PROBE_QUIET seconds (2 by default), or
    after 60 s."""
    quiet = float(os.environ.get("PROBE_QUIET", "2"))
    quiet_since, size, end = time.monotonic(), -1, time.monotonic() + 60
    while time.monotonic() < end:
        now_size = os.path.getsize(os.environ["PROBE_LOG"])
        if now_size != size:
            size, quiet_since = now_size, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet:
            break
        time.sleep(0.1)


main()
