#!/usr/bin/env bash
# End-to-end benchmark: smtpd, OpenSMTPD and Postfix side by side, same load, same run.
#
#   bench/run.sh [SIZES] [CONCURRENCIES]          e.g. bench/run.sh "2048 102400" "1 10 50 200"
#
# As root on Debian 12 with ../shared/bench beside the clone. Starts, on loopback:
#   smtpd      127.0.0.1:2540  (this tree's release build)
#   opensmtpd  127.0.0.1:2541  (Debian's 6.8, listen backlog raised from 5 to 512 by
#                               ../shared/bench/listen_backlog_shim.c: its best case)
#   postfix    127.0.0.1:2542  (Debian's 3.7 unpacked by get_smtp_tools.sh, private instance)
#   smtp-sink  127.0.0.1:2543  (no disk: the protocol ceiling)
# each accepting mail for bench.test and delivering it to one maildir user (uid 2000 for
# smtpd and OpenSMTPD, user pfbench for Postfix), then drives them interleaved with
# Postfix's smtp-source through bench/matrix_keep.sh (throughput.py: a message is
# delivered when its file is in the maildir) and prints the median table of
# summarize.py, the delivered-rate ratios smtpd/OpenSMTPD and smtpd/Postfix per cell,
# and the disk's raw durable-commit rate (fsync_rate.py, 1 and 16 writers).
# The mail of the measured sequence is kept: before each run every maildir's new/ is set
# aside (renamed) rather than emptied, and all of it is deleted at the end, after the
# fsync_rate.py figures, or at the start of the next call. On ext4 without a journal every
# file created in the minutes after a deletion scans the freed inodes, so deleting 2,000
# files before each run measures the file system's scan more than the servers (see
# bench/matrix_keep.sh and docs/benchmarks.md). Start a call after some minutes without
# mass deletions on the disk. DELETE_MAIL=1 drives them through ../shared/bench/
# run_matrix.sh as shipped instead, which deletes each maildir's mail before every run.
# Environment: DELETE_MAIL (above), BENCH_DIR (default /tmp/smtpd-bench, on the disk under test), REPEAT
# (default 2), N_SMALL/N_LARGE (messages per cell, default 2000/500), PF_ROOT (default
# $HOME/pf; fetched with get_smtp_tools.sh when missing). Every run is bounded by
# run_matrix.sh's RUN_TIMEOUT, and every server is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
sizes=${1:-"2048 102400"}
concs=${2:-"1 10 50 200"}
shared=$(cd ../shared/bench && pwd)
dir=${BENCH_DIR:-/tmp/smtpd-bench}
export PF_ROOT=${PF_ROOT:-$HOME/pf} REPEAT=${REPEAT:-2}
[ "$(id -u)" = 0 ] || { echo "bench/run.sh: run as root (peers run as root, deliveries as uid 2000)" >&2; exit 2; }
[ -x "$PF_ROOT/usr/sbin/smtp-source" ] || "$shared/get_smtp_tools.sh" "$PF_ROOT" >/dev/null
# A previous run's files are moved away now and deleted at the end: deleting thousands of
# files right before the runs would slow the first runs' file creations.
[ -e "$dir" ] && mv "$dir" "$dir.old.$$"
mkdir -p "$dir"
cargo build --release --bin smtpd >/dev/null 2>&1
gcc -shared -fPIC -O2 -o "$dir/backlog.so" "$shared/listen_backlog_shim.c" -ldl

# smtpd: the same configuration as the peers', its spool on the same disk.
mkdir -p "$dir/rs/Maildir"/{new,cur,tmp}
chown -R 2000:2000 "$dir/rs/Maildir"
cat > "$dir/rs/smtpd.conf" <<CONF
listen on 127.0.0.1 port 2540
table users { "bench" = "2000:2000:/var/empty" }
action "bench" maildir "$dir/rs/Maildir" userbase <users>
match from any for domain "bench.test" action "bench"
CONF
"$root/target/release/smtpd" -d -f "$dir/rs/smtpd.conf" --spool "$dir/rs/spool" \
    --resolv-conf "$dir/no-resolver" > "$dir/rs/smtpd.log" 2>&1 < /dev/null &
echo $! > "$dir/rs/pid"
for ((i = 0; i < 100; i++)); do
    ss -Hltn "src 127.0.0.1:2540" | grep -q LISTEN && break
    kill -0 "$(cat "$dir/rs/pid")" 2>/dev/null || { cat "$dir/rs/smtpd.log" >&2; exit 1; }
    sleep 0.1
done
stop_all() {
    kill "$(cat "$dir/rs/pid")" 2>/dev/null || true
    for s in os pf sink; do [ -f "$dir/$s/pid" ] && "$shared/peers.sh" stop "$dir/$s" >/dev/null 2>&1; done
    true
}
trap stop_all EXIT
: > "$dir/resolv.conf"
RESOLV_CONF="$dir/resolv.conf" SMTPD_PRELOAD="$dir/backlog.so" SMTPD=/usr/sbin/smtpd \
    "$shared/peers.sh" opensmtpd-start "$dir/os" 127.0.0.1:2541 "$dir/os/Maildir" > /dev/null
"$shared/peers.sh" postfix-start "$dir/pf" 127.0.0.1:2542 pfbench "$dir/pfhome" > /dev/null
"$shared/peers.sh" sink-start "$dir/sink" 127.0.0.1:2543 > /dev/null
sleep 1
cat > "$dir/targets.txt" <<T
smtpd     127.0.0.1:2540 $dir/rs/Maildir     $(cat "$dir/rs/pid")  bench@bench.test
opensmtpd 127.0.0.1:2541 $dir/os/Maildir     $(cat "$dir/os/pid")  bench@bench.test
postfix   127.0.0.1:2542 $dir/pfhome/Maildir $(cat "$dir/pf/pid")  pfbench@bench.test
smtp-sink 127.0.0.1:2543 -                   $(cat "$dir/sink/pid") bench@bench.test
T
if [ "${DELETE_MAIL:-0}" = 1 ]; then
    echo "mode: run_matrix.sh (each maildir's mail deleted before every run)"
    "$shared/run_matrix.sh" "$dir/targets.txt" "$dir/results.jsonl" "$sizes" "$concs" 2> "$dir/matrix.log"
else
    echo "mode: bench/matrix_keep.sh (delivered mail set aside before every run, deleted at the end)"
    SHARED="$shared" "$root/bench/matrix_keep.sh" "$dir/targets.txt" "$dir/results.jsonl" \
        "$sizes" "$concs" 2> "$dir/matrix.log"
fi
stop_all
trap - EXIT
python3 "$shared/summarize.py" "$dir/results.jsonl"
echo
python3 - "$dir/results.jsonl" <<'PY'
import json, statistics, sys
from collections import defaultdict
runs = defaultdict(list)
for line in open(sys.argv[1]):
    d = json.loads(line)
    runs[(d["label"], d["size"], d["conc"])].append(d)
def med(label, size, conc, key):
    xs = [r[key] for r in runs.get((label, size, conc), []) if r.get(key) is not None]
    return statistics.median(xs) if xs else None
cells = sorted({(s, c) for (_, s, c) in runs})
print("| size | sessions | smtpd delivered/s | ÷ OpenSMTPD | ÷ Postfix | smtpd CPU ms/msg | OpenSMTPD | Postfix |")
print("|---|---|---|---|---|---|---|---|")
for s, c in cells:
    ours, os_, pf = (med(l, s, c, "deliver_rate") for l in ("smtpd", "opensmtpd", "postfix"))
    cpu = [med(l, s, c, "server_cpu_ms_per_msg") for l in ("smtpd", "opensmtpd", "postfix")]
    ratio = lambda a, b: f"{a / b:.2f}×" if a and b else "–"
    f = lambda x: "–" if x is None else f"{x:.2f}"
    print(f"| {s} | {c} | {f(ours)} | {ratio(ours, os_)} | {ratio(ours, pf)} | {f(cpu[0])} | {f(cpu[1])} | {f(cpu[2])} |")
PY
echo
for w in 1 16; do
    python3 "$shared/fsync_rate.py" "$dir/fsync" -n 1000 --writers $w --dirsync | tail -n 1
done
# The measured sequence is over: its mail (kept, or set aside) goes now, with any earlier
# call's work directory.
find "$dir" -path '*/Maildir/new.aside.*' -prune -exec rm -rf {} + 2>/dev/null || true
rm -rf "$dir".old.*
