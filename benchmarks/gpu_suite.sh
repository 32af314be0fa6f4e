#!/usr/bin/env bash
# Every GPU figure from one prepared command.
#
#   bash benchmarks/gpu_suite.sh --prepare   here: copy what the GPU machine lacks (wheels, CIFAR-10) into .gpu/
#                                            and print the device call to make
#   bash benchmarks/gpu_suite.sh             on the GPU machine: install from .gpu/, then every stage under its own
#                                            deadline, the whole run within SUITE_SECONDS
#   bash benchmarks/gpu_suite.sh --dry-run   on the CPU: every stage at tiny sizes (argument names, imports, output
#                                            files), skipping only what needs CUDA
#   bash benchmarks/gpu_race.sh [--dry-run]  the GPU race, a sibling with the same contract
#
# Stages: CUDA tests (pytest -m cuda), P1 assign.py, P3 step.py (eager, then model.compile=true), profile_loop.py
# (the real loop of one-view CoKe and SimCLR under torch.profiler), augment.py, P2 time_to_accuracy.py (CoKe, SimCLR).
# A failed stage is recorded and the next one runs. Output under $OUT (./gpu-results/ when $OUT is unset): summary.md
# and logs.tar.gz (one raw log per stage), two files of the 8 a device call brings back; the summary is printed last.
set -euo pipefail

# ---- settings the lead may change -----------------------------------------------------------------------------------
COKE_CONFIG=configs/pretrain/coke_cifar10.yaml      # P2 and augment: switch to the best CoKe configuration
SIMCLR_CONFIG=configs/pretrain/simclr_cifar10.yaml
P2_MINUTES=2.0          # training minutes of each P2 run (cut when the suite runs behind)
P2_OVERHEAD=50          # seconds a P2 run spends outside training: start-up, kNN evaluations
SUITE_SECONDS=530       # the whole GPU run, install included; the device call allows 600
DRY_STAGE_SECONDS=1200  # dry run: a stage's deadline, only to stop a hang: 15-40 CPU s each, so >= 30x slack
DRY_SUITE_SECONDS=2700  # dry run: the whole run's deadline (about 3 CPU min in all; 15x slack for a loaded machine)

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
SELF=benchmarks/gpu_suite.sh
GPU_DIR=${GPU_DIR:-$REPO/.gpu}
WHEELS_SRC=${WHEELS_SRC:-$REPO/../shared/wheels/gpu-py312}
CIFAR_SRC=${CIFAR_SRC:-$REPO/../shared/data/cifar10-jpeg.tar.gz}
CIFAR_SHA256=6c9b930289b4e49b2ec38c4eec6d8f11a272ce9d803b1c98018fbcc8682241ce
CARRY_LIMIT=$((64 * 1024 * 1024))
SITE=${GPU_SITE:-/tmp/coke-gpu-site}

die() { echo "gpu_suite: $*" >&2; exit 1; }

# ---- --prepare -------------------------------------------------------------------------------------------------------
prepare() {
    [[ -d $WHEELS_SRC ]] || die "no wheels folder $WHEELS_SRC"
    [[ -f $CIFAR_SRC ]] || die "no CIFAR-10 archive $CIFAR_SRC"
    rm -rf "$GPU_DIR/wheels" "$GPU_DIR/data"
    mkdir -p "$GPU_DIR/wheels" "$GPU_DIR/data"
    cp "$WHEELS_SRC"/*.whl "$GPU_DIR/wheels/"
    cp "$CIFAR_SRC" "$GPU_DIR/data/cifar10-jpeg.tar.gz"
    chmod -R u+w "$GPU_DIR"
    (cd "$GPU_DIR/data" && echo "$CIFAR_SHA256  cifar10-jpeg.tar.gz" | sha256sum --check --quiet) \
        || die "cifar10-jpeg.tar.gz does not match its sha256"
    if [[ $GPU_DIR == "$REPO/.gpu" ]] && ! git check-ignore -q .gpu; then
        die ".gpu/ is not git-ignored: add it to .gitignore (carry takes ignored paths only)"
    fi
    local carried tree
    carried=$(du -sb "$GPU_DIR" | cut -f1)
    tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -n1 |
        cut -f1)
    echo "prepared $GPU_DIR:"
    (cd "$GPU_DIR" && find . -type f | sort | sed 's|^\./|  |')
    awk -v c="$carried" -v t="$tree" 'BEGIN { m = 1048576
        printf "size: carried %.1f MiB + working tree %.1f MiB", c / m, t / m
        printf " = %.1f MiB (limit 64 MiB)\n", (c + t) / m }'
    ((carried + tree < CARRY_LIMIT)) || die "over the 64 MiB the device call carries"
    echo -e "\ndevice call (tool device, verb run; the race: benchmarks/gpu_race.sh for the command):"
    echo '  {"command": "bash benchmarks/gpu_suite.sh", "carry": [".gpu"], "timeout_s": 600}'
}
# ---- --install: one stage of the suite (its own process, so it runs under `timeout`) --------------------------------
install_and_check() {
    if [[ $SUITE_MODE == gpu ]]; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
        ls "$GPU_DIR"/wheels/*.whl >/dev/null || die "no wheels in $GPU_DIR/wheels: run --prepare here, carry .gpu"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "$GPU_DIR"/wheels/*.whl
        echo "installed $(cd "$GPU_DIR/wheels" && ls) into $SITE"
    else
        echo "dry run: no install, the current environment ($PY) is used"
    fi
    "$PY" - <<'EOF'
import importlib, importlib.metadata, platform, sys, time
print("python", platform.python_version(), sys.executable)
missing = []
for name in ["torch", "torchvision", "pytorch_lightning", "timm", "triton", "kornia", "omegaconf", "torchmetrics",
             "rich", "safetensors", "scipy", "numpy", "yaml", "pytest"]:
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", None) or importlib.metadata.version(name))
    except Exception as err:  # noqa: BLE001 - report every missing package, then fail
        missing.append(name)
        print(f"{name} MISSING: {err}")
if missing:
    sys.exit(f"missing: {', '.join(missing)}")
import torch
from configs.loader import load_config
from datamodules import load_split
print("cuda:", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
cfg = load_config(None, ["data.name=cifar10"]).data
for split in ("train", "test"):  # decoded once here, read from the cache by every later stage
    start = time.perf_counter()
    shape = tuple(load_split(cfg, split).images.shape)
    print(f"CIFAR-10 {split} {shape}: decoded or read from {cfg.cache_dir} in {time.perf_counter() - start:.1f} s")
EOF
}
# ---- the stages ------------------------------------------------------------------------------------------------------
now() { date +%s; }
seconds_left() { echo $((END - $(now))); }

children_cpu() {  # CPU_NOW := user + system seconds of this shell's finished children (`times` runs in this shell)
    times >"$TIMES_FILE"
    CPU_NOW=$(awk 'NR == 2 { split($0, t, /[ms ]+/); print t[1] * 60 + t[2] + t[3] * 60 + t[4] }' "$TIMES_FILE")
}

# stage NAME CAP COMMAND...: run COMMAND with its output in NAME.log, under a deadline of CAP seconds or the time
# the suite has left, whichever is less; record its status.
stage() {
    local name=$1 cap=$2
    shift 2
    local log="$OUT_DIR/$name.log" left limit start cpu_start cpu rc=0 status
    left=$(($(seconds_left) - 15))  # room for the kill grace and the summary
    limit=$((cap < left ? cap : left))
    if ((limit < 10)); then
        record "$name" "not run: no time left" 0 0 "$*"
        return
    fi
    { echo "\$ $*"; echo "(deadline ${limit} s)"; } >"$log"
    start=$(now)
    children_cpu
    cpu_start=$CPU_NOW
    timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1 || rc=$?
    children_cpu
    if ((rc == 0)); then
        status=ok
    elif ((rc == 124 || rc == 137)); then
        status="timed out at ${limit} s"
    elif [[ $SUITE_MODE == dry ]] && grep -q "needs a CUDA device" "$log"; then
        status="skipped: needs CUDA"
    else
        status="failed (exit $rc)"
    fi
    cpu=$(awk -v a="$cpu_start" -v b="$CPU_NOW" 'BEGIN { print int(b - a) }')
    record "$name" "$status" $(($(now) - start)) "$cpu" "$*"
}

record() {  # NAME STATUS WALL_SECONDS CPU_SECONDS COMMAND
    NAMES+=("$1") STATUSES+=("$2") WALL+=("$3") CPU+=("$4") COMMANDS+=("$5")
    echo "[gpu_suite] $1: $2 ($3 s, $4 CPU s)"
}

# p2_minutes RUNS_LEFT: P2's training minutes for the next run, so that RUNS_LEFT runs fit in the time left
p2_minutes() {
    awk -v left="$(seconds_left)" -v runs="$1" -v cap="$P2_MINUTES" -v over="$P2_OVERHEAD" \
        'BEGIN { m = ((left - 20) / runs - over) / 60; if (m > cap) m = cap; printf "%.2f", (m > 0.25 ? m : 0) }'
}

p2_stage() {  # NAME CONFIG RUNS_LEFT
    local name=$1 config=$2 minutes
    if [[ $SUITE_MODE == dry ]]; then
        stage "$name" "$DRY_STAGE_SECONDS" "$PY" benchmarks/time_to_accuracy.py --config "$config" --device cpu \
            --minutes 0.02 --backbone test_resnet --batch-size 32 --subset 50 --eval-subset 5 --workers 0 --threads 1 \
            --peak-size 64
        return
    fi
    minutes=$(p2_minutes "$3")
    if [[ $minutes == 0.00 ]]; then
        record "$name" "not run: no time left" 0 0 "time_to_accuracy.py --config $config"
        return
    fi
    stage "$name" "$(awk -v m="$minutes" -v o="$P2_OVERHEAD" 'BEGIN { printf "%d", m * 60 + o + 30 }')" \
        "$PY" benchmarks/time_to_accuracy.py --config "$config" --device cuda --minutes "$minutes"
}

run_stages() {
    stage install "$([[ $SUITE_MODE == gpu ]] && echo 150 || echo "$DRY_STAGE_SECONDS")" bash "$SELF" --install
    if [[ $SUITE_MODE == gpu ]]; then
        stage cuda-tests 210 "$PY" -m pytest -m cuda tests/test_cuda*.py -p no:cacheprovider -q --timeout 120
        stage p1-assign 90 "$PY" benchmarks/assign.py --rows 4096 --clusters 3000+4000+5000 --dims 128
        stage p3-step 120 "$PY" benchmarks/step.py --methods coke,simclr --reference simclr --backbone resnet18 \
            --batch-size 512 --device cuda --precision bf16-mixed --set model.cifar_stem=true model.channels_last=true
        stage p3-compiled 150 "$PY" benchmarks/step.py --methods coke,simclr --reference simclr --backbone resnet18 \
            --batch-size 512 --device cuda --precision bf16-mixed --warmup 10 \
            --set model.cifar_stem=true model.channels_last=true model.compile=true
        stage profile 150 "$PY" benchmarks/profile_loop.py --config "$COKE_CONFIG" --config "$SIMCLR_CONFIG" \
            --device cuda --steps 50 --warmup 15 --set data.batch_size=512 trainer.precision=bf16-mixed
        stage augment 75 "$PY" benchmarks/augment.py --config "$COKE_CONFIG" --device cuda --workers 4,8,16 \
            --batch-size 512 --batches 20 --warmup 3
    else
        local cap=$DRY_STAGE_SECONDS
        stage cuda-tests "$cap" "$PY" -m pytest -m cuda tests/test_cuda*.py -p no:cacheprovider -q
        stage p1-assign "$cap" "$PY" benchmarks/assign.py --rows 64 --clusters 3000 --dims 16 --warmup 1 --iters 2
        stage p3-step "$cap" "$PY" benchmarks/step.py --methods coke,simclr --reference simclr --backbone test_resnet \
            --batch-size 8 --steps 2 --warmup 1 --num-images 512 --device cpu --precision 32 --threads 1 \
            --set model.cifar_stem=false model.channels_last=true
        stage profile "$cap" "$PY" benchmarks/profile_loop.py --config "$COKE_CONFIG" --config "$SIMCLR_CONFIG" \
            --device cpu --steps 2 --warmup 1 --set model.backbone=test_resnet model.cifar_stem=false \
            data.batch_size=16 data.subset=60 data.eval_subset=2 trainer.precision=32
        stage augment "$cap" "$PY" benchmarks/augment.py --config "$COKE_CONFIG" --device cpu --workers 0 \
            --kornia-workers 0 --batch-size 16 --batches 2 --warmup 1 --num-images 64 --threads 1
    fi
    p2_stage p2-coke "$COKE_CONFIG" 2
    p2_stage p2-simclr "$SIMCLR_CONFIG" 1
}
# ---- the summary -----------------------------------------------------------------------------------------------------
# excerpt NAME: the result lines of a stage's log (its tables), or the end of the log when the stage did not pass
excerpt() {
    local log="$OUT_DIR/$1.log" status=$2
    [[ -f $log ]] || return 0
    if [[ $status != ok && $status != skipped* ]]; then
        tail -n 25 "$log"
    elif [[ $1 == install ]]; then
        tail -n +3 "$log"
    elif [[ $1 == cuda-tests ]]; then
        awk '/short test summary info/ { on = 1 } on' "$log" | grep . || tail -n 3 "$log"
    elif [[ $1 == p1-assign ]]; then
        awk '/^device:/ { on = 1 } on' "$log" | grep . || tail -n 3 "$log"
    else  # a caption, a blank line, a markdown table and any lines after it
        awk '{ line[NR] = $0 } /^\|/ && !first { first = NR }
             END { if (!first) { for (i = NR > 3 ? NR - 2 : 1; i <= NR; i++) print line[i]; exit }
                   start = (first > 2 && line[first - 1] == "") ? first - 2 : first
                   for (i = start; i <= NR; i++) print line[i] }' "$log"
    fi
}

write_summary() {
    local summary="$OUT_DIR/summary.md" device
    if [[ $SUITE_MODE == gpu ]]; then
        device=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 || true)
    else
        device="CPU only (dry run: tiny sizes, the plumbing only; no figure here is a GPU figure)"
    fi
    {
        echo "# GPU suite ($SUITE_MODE run), $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo
        echo "- device: ${device:-unknown}"
        echo "- wall time: $(($(now) - START)) s of $((END - START)) s; CoKe config for P2 and augment: $COKE_CONFIG"
        echo "- raw logs: logs.tar.gz beside this file (<stage>.log each)"
        echo
        echo "| stage | status | seconds | CPU seconds |"
        echo "|---|---|---:|---:|"
        local i
        for i in "${!NAMES[@]}"; do
            echo "| ${NAMES[$i]} | ${STATUSES[$i]} | ${WALL[$i]} | ${CPU[$i]} |"
        done
        for i in "${!NAMES[@]}"; do
            echo
            echo "## ${NAMES[$i]}: ${STATUSES[$i]}"
            echo
            echo "    ${COMMANDS[$i]}"
            echo
            echo '```'
            excerpt "${NAMES[$i]}" "${STATUSES[$i]}"
            echo '```'
        done
    } >"$summary"
}

run_suite() {
    OUT_DIR=${OUT:-$REPO/gpu-results}
    mkdir -p "$OUT_DIR"
    rm -rf "$OUT_DIR"/*.log "$OUT_DIR"/*.csv "$OUT_DIR/summary.md" "$OUT_DIR/logs.tar.gz" "$OUT_DIR/race.png" \
        "$OUT_DIR/race"
    export SUITE_MODE PY
    export PYTHONUNBUFFERED=1 WANDB_MODE=disabled MPLBACKEND=Agg
    if [[ $SUITE_MODE == gpu ]]; then
        PY=${PYTHON:-python3}
        export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
        export COKE_DATA_ROOT=$GPU_DIR/data
        export COKE_CACHE_DIR=${COKE_CACHE_DIR:-/tmp/coke-cache}
        export COKE_TEST_CACHE=$COKE_CACHE_DIR  # the tests and the benchmarks decode CIFAR-10 once
    else
        PY=${PYTHON:-$([[ -x $REPO/.venv/bin/python ]] && echo "$REPO/.venv/bin/python" || echo python3)}
        export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
        export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
        SUITE_SECONDS=$DRY_SUITE_SECONDS
    fi
    NAMES=() STATUSES=() WALL=() CPU=() COMMANDS=()
    TIMES_FILE=$(mktemp)
    trap 'rm -f "$TIMES_FILE"' EXIT
    START=$(now)
    END=$((START + SUITE_SECONDS))
    "${STAGES:-run_stages}"  # benchmarks/gpu_race.sh runs its own
    write_summary
    (cd "$OUT_DIR" && tar -czf logs.tar.gz ./*.log $(ls ./*.csv 2>/dev/null) && rm -f ./*.log ./*.csv)  # few files
    echo
    cat "$OUT_DIR/summary.md"
    local status
    for status in "${STATUSES[@]}"; do
        [[ $status == ok || $status == skipped* ]] || return 1  # exit 1 when a stage did not pass
    done
}

main() {
    case "${1:-}" in
        --prepare) prepare ;;
        --install) PY=${PY:-python3} SUITE_MODE=${SUITE_MODE:-gpu} install_and_check ;;
        --dry-run) SUITE_MODE=dry run_suite ;;
        "") SUITE_MODE=gpu run_suite ;;
        *) die "unknown argument $1; use --prepare, --dry-run or nothing (the GPU run)" ;;
    esac
}

# One line, so bash has read all of it before it runs; sourced (gpu_race.sh), it only defines the functions.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then main "$@"; exit; fi
