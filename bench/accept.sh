#!/usr/bin/env bash
# Accept-rate benchmark: smtpd against OpenSMTPD on the same machine, same load.
#
#   bench/accept.sh [N] [CONCURRENCIES] [SIZES]      e.g. bench/run.sh 2000 "1 10 50" "2048 102400"
#
# Builds smtpd and the load generator (examples/smtpload.rs), starts smtpd on 127.0.0.1:2540
# with its spool under $BENCH_DIR (default /tmp/smtpd-bench, i.e. the disk under test), and,
# when OpenSMTPD is installed and ../shared/bench/peers.sh is there, OpenSMTPD on
# 127.0.0.1:2541 (in a private mount namespace, as root). Each target receives N messages of
# each size at each concurrency, interleaved; the table gives accepted messages/s (every
# message counted only after its 250), server CPU ms per 1,000 messages and peak RSS.
# smtpd fsyncs the message and envelope before every 250; OpenSMTPD 6.8 does not.
# Every run is bounded: smtpload stops after N messages, and each target is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
concs=${2:-"1 10 50"}
sizes=${3:-"2048 102400"}
dir=${BENCH_DIR:-/tmp/smtpd-bench}
rm -rf "$dir"; mkdir -p "$dir"
cargo build --release --bin smtpd --example smtpload >/dev/null 2>&1
load=target/release/examples/smtpload

cat > "$dir/smtpd.conf" <<CONF
listen on 127.0.0.1 port 2540
table users { "bench" = "2000:2000:/var/empty" }
action "bench" maildir "$dir/maildir" userbase <users>
match from any for domain "bench.test" action "bench"
CONF
# No DNS server for either side: OpenSMTPD gets an empty resolv.conf (its resolver is refused
# at once by 127.0.0.1:53), smtpd no resolver file at all (no lookups).
: > "$dir/resolv.conf"
mkdir -p "$dir/maildir"
[ "$(id -u)" = 0 ] && chown 2000:2000 "$dir/maildir"
target/release/smtpd -d -f "$dir/smtpd.conf" --spool "$dir/spool" --resolv-conf "$dir/no-resolver" > "$dir/smtpd.log" 2>&1 &
ours=$!
trap 'kill $ours 2>/dev/null || true' EXIT
peers=../shared/bench/peers.sh
theirs=
if [ -x /usr/sbin/smtpd ] && [ -x "$peers" ] && [ "$(id -u)" = 0 ]; then
    RESOLV_CONF="$dir/resolv.conf" SMTPD=/usr/sbin/smtpd "$peers" opensmtpd-start "$dir/os" 127.0.0.1:2541 "$dir/os-maildir" > "$dir/os.pid" 2> "$dir/os.err" || true
    theirs=$(tail -n 1 "$dir/os.pid" 2>/dev/null || true)
    trap 'kill $ours 2>/dev/null || true; "$peers" stop "$dir/os" >/dev/null 2>&1 || true' EXIT
fi
sleep 1
printf '| target | size | sessions | accepted msg/s | server CPU ms / 1000 msgs | peak RSS KB | txn p50 ms | txn p99 ms |\n|---|---|---|---|---|---|---|---|\n'
for size in $sizes; do
    for c in $concs; do
        for t in smtpd opensmtpd; do
            if [ $t = smtpd ]; then port=2540 pid=$ours; else [ -n "$theirs" ] || continue; port=2541 pid=$theirs; fi
            out=$($load 127.0.0.1:$port -n "$n" -c "$c" --size "$size" --to bench@bench.test --server-pid "$pid")
            get() { echo "$out" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
            printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$t" "$size" "$c" "$(get accepted_per_s)" \
                "$(get server_cpu_ms_per_1000)" "$(get server_peak_rss_kb)" "$(get txn_ms_p50)" "$(get txn_ms_p99)"
        done
    done
done
