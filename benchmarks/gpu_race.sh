#!/usr/bin/env bash
# The GPU race in one prepared device call, with gpu_suite.sh's contract and plumbing.
#
#   bash benchmarks/gpu_suite.sh --prepare   here, as for the suite (it fills .gpu/, carried by the call)
#   bash benchmarks/gpu_race.sh              on the GPU machine: benchmarks/budget.py trains RACE_ROWS for
#                                            RACE_MINUTES each at equal GPU time on full CIFAR-10 (ResNet-18, CIFAR
#                                            stem, batch 512) and scores them with evaluate.py (kNN-200 with the full
#                                            train bank, linear) against random init
#   bash benchmarks/gpu_race.sh --dry-run    on the CPU, at tiny sizes
#
# Output under $OUT: summary.md (the table), logs.tar.gz (the logs and each row's CSV log: CoKe's clustering dashboard,
# label churn, cluster sizes, the fraction under the bound, duals, NMI) and race.png. One budget per device call:
# RACE_MINUTES=2, then 5, then 8 in later calls (fewer rows at 5 and 8), so the rows build a time-to-accuracy curve.
# Device call: {"command": "RACE_MINUTES=2 bash benchmarks/gpu_race.sh", "carry": [".gpu"], "timeout_s": 600}
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/gpu_suite.sh"

RACE_MINUTES=${RACE_MINUTES:-2.0}   # each row's training minutes
RACE_ROWS=${RACE_ROWS:-coke,simclr} # budget.py rows (coke is coke_cifar10.yaml)
RACE_VARIANTS=${RACE_VARIANTS:-}    # extra rows, e.g. "coke-term=coke_cifar10:method.instance_term.weight=10"

race_stages() {
    stage install "$([[ $SUITE_MODE == gpu ]] && echo 150 || echo "$DRY_STAGE_SECONDS")" bash "$SELF" --install
    local variants=()
    [[ -n $RACE_VARIANTS ]] && variants=(--variant $RACE_VARIANTS)
    if [[ $SUITE_MODE == gpu ]]; then
        stage race $(($(seconds_left) - 20)) "$PY" benchmarks/budget.py --device cuda --minutes "$RACE_MINUTES" \
            --rows "$RACE_ROWS" "${variants[@]}" --backbone resnet18 --cifar-stem --batch-size 512 --csv \
            --out "$OUT_DIR/race"
    else
        stage race "$DRY_STAGE_SECONDS" "$PY" benchmarks/budget.py --device cpu --minutes 0.02 --rows "$RACE_ROWS" \
            "${variants[@]}" --backbone test_resnet --batch-size 32 --subset 50 --csv --out "$OUT_DIR/race" \
            --threads 1 --set data.eval_subset=5 --eval-set data.subset=10 data.eval_subset=5 linear.epochs=2
    fi
    local csv row
    for csv in "$OUT_DIR"/race/*/csv/metrics.csv; do  # one file per row, beside the logs (they travel in the tar)
        [[ -f $csv ]] || continue
        row=$(basename "$(dirname "$(dirname "$csv")")")
        cp "$csv" "$OUT_DIR/$row.csv"
    done
    [[ -f $OUT_DIR/race/budget.png ]] && cp "$OUT_DIR/race/budget.png" "$OUT_DIR/race.png"
    rm -rf "$OUT_DIR/race"
}

case "${1:-}" in
    --dry-run) STAGES=race_stages SUITE_MODE=dry run_suite ;;
    "") STAGES=race_stages SUITE_MODE=gpu run_suite ;;
    *) die "unknown argument $1; use --dry-run or nothing (the GPU run); --prepare is gpu_suite.sh's" ;;
esac
