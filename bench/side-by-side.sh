#!/bin/bash
# Before/after in one go: round-robin over variants, one `bench/run.py --quick` each per
# round, so every variant sees the same machine noise. Results: $OUT/<variant>-<round>.json;
# print the medians with `python3 bench/side-by-side.py $OUT`.
#
#   BEFORE=/path/to/other/checkout/.venv/bin/kourier-relay VARIANTS="before default pool" \
#     ROUNDS=3 SCN=1,2,4 bench/side-by-side.sh
set -eu
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
SCN=${SCN:-1,2}
OUT=${OUT:-bench/results/side-by-side-$(date +%Y%m%d-%H%M%S)}
VARIANTS=${VARIANTS:-"before default pool"}
mkdir -p "$OUT"
for r in $(seq 1 "$ROUNDS"); do
  for v in $VARIANTS; do
    env=()
    case $v in
      before)     args=(--relay "${BEFORE:?set BEFORE to the other kourier-relay}" --processes 1);;
      before-p3)  args=(--relay "${BEFORE:?}" --processes 3);;
      default)    args=(--processes 1);;
      pool)       args=(--processes 3);;
      executor)   args=(--processes 1 --whatif procpool); env=(BENCH_SEND_PROCS=2);;
      *) echo "unknown variant $v" >&2; exit 2;;
    esac
    echo "$(date +%T) round $r $v load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/progress.log"
    env "${env[@]}" .venv/bin/python bench/run.py --quick --scenarios "$SCN" --pinned-pairs 1 \
      "${args[@]}" --out "$OUT/$v-$r.json" > "$OUT/$v-$r.log" 2>&1
  done
done
