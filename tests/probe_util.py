"""What the namespace probes share: the loopback interface brought up, and SMTP replies
read line by line."""
import fcntl
import signal
import socket
import struct
import subprocess

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def loopback_up():
    """Brings up `lo` of the network namespace this process runs in."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    req = struct.pack("16sH", b"lo", 0)
    flags = struct.unpack("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
    fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))
    s.close()


def reply(f):
    """One SMTP reply from the file `f`: its lines, `<closed>` last if the peer closed."""
    lines = []
    while True:
        line = f.readline()
        if not line:
            lines.append("<closed>")
            return lines
        lines.append(line.decode(errors="replace").rstrip("\r\n"))
        if len(line) < 4 or line[3:4] != b"-":
            return lines


def stop(mta):
    """SIGTERM to `mta` if it still runs, then SIGKILL after 15 s."""
    if mta.poll() is None:
        mta.send_signal(signal.SIGTERM)
        try:
            mta.wait(15)
        except subprocess.TimeoutExpired:
            mta.kill()
            mta.wait()
