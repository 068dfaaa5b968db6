#!/bin/bash
# ../shared/bench/run_matrix.sh with one difference: before every run (warm-up and
# measured) the maildir's new/ is set aside (renamed, and an empty one made in its place)
# instead of its files being deleted (throughput.py --clean).
#
#   SHARED=../shared/bench bench/matrix_keep.sh TARGETS_FILE OUT.jsonl [SIZES] [CONCS]
#
# Same targets file, environment (N_SMALL, N_LARGE, RUN_TIMEOUT, REPEAT) and output as
# run_matrix.sh. Why: on ext4 without a journal every new inode is checked against the
# inodes freed in the last minutes of its block group, so the 2,000 files deleted right
# before each run make every file created in it scan them; that cost lands on every
# server alike but is a property of the benchmark, not of the servers. Nothing is deleted
# here; bench/run.sh removes the set-aside mail after the last run.
set -uo pipefail
shared=${SHARED:?SHARED must name ../shared/bench}
targets=$1 out=$2
sizes=${3:-"2048 102400"}
concs=${4:-"1 10 50"}
N_SMALL=${N_SMALL:-2000} N_LARGE=${N_LARGE:-500} RUN_TIMEOUT=${RUN_TIMEOUT:-300} REPEAT=${REPEAT:-1}
aside=0

set_aside() {
    local md=$1
    [ "$md" = - ] && return 0
    aside=$((aside + 1))
    mv "$md/new" "$md/new.aside.$aside" && mkdir "$md/new" &&
        chown --reference="$md/new.aside.$aside" "$md/new" &&
        chmod --reference="$md/new.aside.$aside" "$md/new"
}

for ((r = 1; r <= REPEAT; r++)); do
for size in $sizes; do
    if [ "$size" -lt 10000 ]; then n=$N_SMALL; else n=$N_LARGE; fi
    for c in $concs; do
        while read -r label hp md pid rcpt; do
            [ -z "${label:-}" ] && continue
            case "$label" in \#*) continue ;; esac
            set_aside "$md"
            python3 "$shared/throughput.py" "$hp" "$md" --server-pid "$pid" -n 20 -c 1 \
                --size "$size" --to "$rcpt" --timeout 60 >/dev/null
            sleep 1
            set_aside "$md"
            echo "== $(date +%T) $label size=$size conc=$c n=$n run=$r (mail set aside)" >&2
            python3 "$shared/throughput.py" "$hp" "$md" --server-pid "$pid" -n "$n" -c "$c" \
                --size "$size" --to "$rcpt" --timeout "$RUN_TIMEOUT" \
                --label "$label" --json-out "$out" \
                | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print("   accept %s/s deliver %s/s srv_cpu %s s (%s ms/msg) peak_pss %s kB other_cpu %s tcp %s rc %s" % (d["accept_rate"], d["deliver_rate"], d["server_cpu_s"], d["server_cpu_ms_per_msg"], (d["server_peak"] or {}).get("pss_sum_kb"), d["other_cpu_s"], d["tcp_delta"], d["smtp_source_rc"]))' >&2
            sleep 2
        done < "$targets"
    done
done
done
