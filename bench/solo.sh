#!/usr/bin/env bash
# smtpd alone, end to end: one configuration (mail for bench.test to one maildir user,
# uid 2000), a fresh spool and maildir, Postfix's smtp-source as the client.
#
#   bench/solo.sh [BINARY] [SESSIONS] [MESSAGES] [SIZE]
#   e.g. bench/solo.sh target/release/smtpd 50 3000 2048
#
# As root, with ../shared/bench beside the clone (smtp-source from $PF_ROOT, default $HOME/pf,
# fetched by get_smtp_tools.sh when missing). Prints one line: delivered and accepted
# messages/s and the server tree's CPU per message. For A/B comparisons of two builds: run
# them alternately, several times each.
#
# Nothing is deleted before or after the run (the work directory is printed; remove it
# later): on ext4 without a journal, as on the project's machines, every new inode is
# checked against the inodes freed in the last minutes, and deleting a few thousand files
# right before a run slows every file creation in it (run_matrix.sh's --clean does that, for
# every target alike). ROUNDS=N runs N measured runs on the same daemon; with CLEAN=1 each
# one first deletes the maildir's mail, as run_matrix.sh does, to show that cost.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/smtpd}; sessions=${2:-50}; n=${3:-3000}; size=${4:-2048}
shared=$(cd ../shared/bench && pwd)
export PF_ROOT=${PF_ROOT:-$HOME/pf}
[ "$(id -u)" = 0 ] || { echo "bench/solo.sh: run as root (deliveries run as uid 2000)" >&2; exit 2; }
[ -x "$PF_ROOT/usr/sbin/smtp-source" ] || "$shared/get_smtp_tools.sh" "$PF_ROOT" >/dev/null
d=$(mktemp -d /tmp/smtpd-solo.XXXXXX)
chmod 755 "$d"
mkdir -p "$d/Maildir"
chown 2000:2000 "$d/Maildir"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$d/smtpd.conf" <<CONF
listen on 127.0.0.1 port $port
table users { "bench" = "2000:2000:/var/empty" }
action "bench" maildir "$d/Maildir" userbase <users>
match from any for domain "bench.test" action "bench"
CONF
"$bin" -d -f "$d/smtpd.conf" --spool "$d/spool" --resolv-conf "$d/no-resolver" \
    > "$d/smtpd.log" 2>&1 < /dev/null &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for ((i = 0; i < 100; i++)); do
    ss -Hltn "src 127.0.0.1:$port" | grep -q LISTEN && break
    kill -0 $pid 2>/dev/null || { cat "$d/smtpd.log" >&2; exit 1; }
    sleep 0.1
done
# Warm-up: delivery workers started, caches filled.
python3 "$shared/throughput.py" "127.0.0.1:$port" "$d/Maildir" --server-pid $pid -n 20 -c 1 \
    --to bench@bench.test > /dev/null
clean=()
[ "${CLEAN:-0}" = 1 ] && clean=(--clean)
for ((round = 1; round <= ${ROUNDS:-1}; round++)); do
    python3 "$shared/throughput.py" "127.0.0.1:$port" "$d/Maildir" --server-pid $pid -n "$n" \
        -c "$sessions" --size "$size" --to bench@bench.test --timeout 300 "${clean[@]}" \
        | python3 -c 'import json, sys; d = json.load(sys.stdin); print("delivered %s msg/s, accepted %s msg/s, server CPU %s ms/msg" % (d["deliver_rate"], d["accept_rate"], d["server_cpu_ms_per_msg"]))'
done
echo "work directory: $d" >&2
