#!/usr/bin/env bash
# Exercises every CUDA path of the harness in one go (under 8 minutes on one GPU) and writes
# its figures to one file: bf16 and fp16 (loss-scaled) runs, channels_last, engine.compile,
# the allocator's peak memory of each run, a 1-process NCCL group through torchrun, the
# NYUv2-size model (random fixture data) at batch 8 for EW, PCGrad and Rep-MTL through
# `run_bench.py perf`, and the Jacobian methods on ResNet-18 (benchmarks/scripts/vs_torchjd.py,
# both sides when TorchJD is installed, the harness's alone otherwise).
#
#   bash benchmarks/scripts/gpu_checks.sh [--cpu] [OUT_FILE]
#
# OUT_FILE defaults to $OUT/gpu_checks.txt when $OUT is set, else results/gpu_checks.txt.
# --cpu (or DEVICE=cpu) runs the same steps on the CPU with tiny budgets, and says which
# steps are CUDA-only and skipped. Every step runs under `timeout`; a failure or a timeout is
# recorded in the file and the script goes on. Exit status: 0 when every step that ran
# passed, 1 otherwise. The whole script keeps to BUDGET_S seconds (default 450 on a GPU, 110
# on the CPU): a step gets at most what is left, and steps past it are recorded as skipped.
# docs/performance.md ("GPU checks") describes it.
set -uo pipefail
cd "$(dirname "$0")/../.."

DEVICE=${DEVICE:-cuda}
FILE=""
for arg in "$@"; do
    case "$arg" in
        --cpu) DEVICE=cpu ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) FILE=$arg ;;
    esac
done
if [ -z "$FILE" ]; then
    if [ -n "${OUT:-}" ]; then FILE=$OUT/gpu_checks.txt; else FILE=results/gpu_checks.txt; fi
fi
mkdir -p "$(dirname "$FILE")"
PY=${PYTHON:-python}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_checks.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
FAILED=0

STARTED=$(date +%s)
if [ "$DEVICE" = cpu ]; then BUDGET_S=${BUDGET_S:-110}; else BUDGET_S=${BUDGET_S:-450}; fi

if [ "$DEVICE" = cpu ]; then
    # Tiny budgets: seconds per step, the whole script in about a minute on 2 cores.
    DENSE="--set data.size=32 --set data.train_size=32 --set data.val_size=16 --set data.test_size=16 --set train.batch_size=8 --set train.epochs=1 --set train.max_steps_per_epoch=2"
    METHODS="ew pcgrad"
    LIMIT=60
    NYU_FIXTURE="--train 6 --val 2"
    NYU="--profile quick --set data.height=48 --set data.width=64 --batch-size 2 --steps 1 --warmup 1 --no-memory"
    NYU_NOTE="CPU: the quick profile's ResNet-18 at 48x64, batch 2 (the paper's ResNet-50 at 288x384, batch 8, on a GPU)"
    JAC="--models tiny --methods upgrad,pcgrad --rounds 1 --steps 1 --warmup 1 --threads 1"
    JAC_NOTE="CPU: the tiny model, 2 methods (ResNet-18, every Jacobian method on a GPU)"
    COMPILE_BACKEND="--set engine.compile_backend=aot_eager"
    COMPILE_NOTE="CPU: aot_eager backend (the compile path without inductor's C++ build); inductor on a GPU"
else
    DENSE="--set data.size=64 --set data.train_size=400 --set data.val_size=100 --set data.test_size=100 --set train.batch_size=32 --set train.epochs=1 --set train.max_steps_per_epoch=30"
    METHODS="ew pcgrad repmtl"
    LIMIT=75
    NYU_FIXTURE="--train 24 --val 4"
    NYU="--profile paper --set data.weights=none --batch-size 8 --steps 10 --warmup 3"
    NYU_NOTE="the paper's model: dilated ResNet-50 + ASPP heads at 288x384, batch 8, random weights and fixture data"
    JAC="--models resnet18 --methods upgrad,mgda,pcgrad,cagrad,nashmtl,imtl_g,aligned_mtl,graddrop,gradvac,fairgrad --rounds 10 --steps 3 --warmup 2"
    JAC_NOTE="ResNet-18 (vs_torchjd.py's model, batch 32), every Jacobian method both libraries have"
    COMPILE_BACKEND=""
    COMPILE_NOTE="inductor"
fi

say() { printf '%s\n' "$*" >> "$FILE"; }

section() { say ""; say "== $1 =="; }

# step NAME LIMIT_S CMD...: run CMD under timeout (at most what is left of BUDGET_S), keep
# the end of its output, record its status.
step() {
    local name=$1 limit=$2; shift 2
    local log=$WORK/$name.log start end rc left
    say "\$ $*"
    left=$((BUDGET_S - ($(date +%s) - STARTED)))
    if [ "$left" -lt 5 ]; then
        say "status: skipped (the script's budget of ${BUDGET_S} s is spent)"; FAILED=1
        return 125
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
    rc=$?
    end=$(date +%s)
    grep -v '^USDT:\|SyncActivityProfilerHandler' "$log" | tail -n "${TAIL:-25}" | sed 's/^/    /' >> "$FILE"
    if [ $rc -eq 0 ]; then
        say "status: ok ($((end - start)) s)"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        say "status: TIMED OUT after ${limit} s"; FAILED=1
    else
        say "status: FAILED (exit $rc, $((end - start)) s)"; FAILED=1
    fi
    return $rc
}

skip() { section "$1"; say "skipped: $2"; }

# figures RESULTS_DIR: each run's status, steps, time and peak memory (summary.json).
figures() {
    "$PY" - "$1" "$DEVICE" >> "$FILE" 2>&1 <<'EOF'
import json, sys
from pathlib import Path
root, device = Path(sys.argv[1]), sys.argv[2]
rows = sorted(root.glob("*/*/*/summary.json"))
if not rows:
    print("figures: no summary.json under", root)
what = "CUDA allocator's peak" if device != "cpu" else "process peak RSS"
for path in rows:
    s = json.loads(path.read_text())
    peak = s.get("peak_memory_bytes")
    peak = f"{peak / 2**20:.0f} MiB" if peak else "n/a"
    print(f"figures: {s['benchmark']} {s['method']}: {s['status']}, {s.get('steps')} steps, "
          f"{s.get('wall_time_s', 0):.1f} s, peak memory {peak} ({what}), "
          f"jacobian path {s.get('jacobian_path')}, world size {s.get('world_size')}")
EOF
}

# run_check SLUG TITLE SETTINGS...: a short `run` on scenes with the settings, then its figures.
run_check() {
    local slug=$1 title=$2; shift 2
    section "$title"
    step "$slug" "$LIMIT" "$PY" run_bench.py run -b scenes -m $METHODS -s 0 --device "$DEVICE" \
        $DENSE "$@" --out "$WORK/$slug" --no-progress
    figures "$WORK/$slug"
}

: > "$FILE"
say "gpu_checks.sh on $(hostname) at $(date -u +%Y-%m-%dT%H:%M:%SZ), device=$DEVICE"
say "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

section "environment"
TAIL=40 step environment 60 "$PY" -c "
import torch, platform
print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda)
print('cuda available:', torch.cuda.is_available(), 'bf16 supported:',
      torch.cuda.is_available() and torch.cuda.is_bf16_supported())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f'gpu {i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, sm {p.major}.{p.minor}')
print('nccl available:', torch.distributed.is_nccl_available(), 'threads:', torch.get_num_threads())
"
if [ "$DEVICE" != cpu ]; then
    command -v nvidia-smi > /dev/null && step nvidia-smi 30 nvidia-smi
fi

run_check bf16 "bf16 autocast" --set engine.amp=bf16
run_check fp16 "fp16 with loss scaling" --set engine.amp=fp16
run_check channels-last "channels_last" --set engine.channels_last=true
run_check compile "torch.compile ($COMPILE_NOTE)" --set engine.compile=true $COMPILE_BACKEND

section "allocator peak memory"
if [ "$DEVICE" = cpu ]; then
    say "CPU: the CUDA allocator's peak is CUDA-only; summary.json holds the process peak RSS instead"
fi
TAIL=40 step peaks 30 "$PY" -c '
import json, sys
from pathlib import Path
rows = sorted(Path(sys.argv[1]).glob("*/*/*/*/summary.json"))
kind = "process peak RSS" if sys.argv[2] == "cpu" else "torch.cuda.max_memory_allocated"
print(f"peak memory of each run ({kind}, from summary.json):")
for path in rows:
    s = json.loads(path.read_text())
    peak = s.get("peak_memory_bytes")
    check = path.relative_to(sys.argv[1]).parts[0]
    method, status = s["method"], s["status"]
    print(f"  {check:14s} {method:8s} {status:9s} "
          + (f"{peak / 2**20:8.0f} MiB" if peak else "     n/a"))
sys.exit(0 if rows else 1)
' "$WORK" "$DEVICE"

# With one process torchrun sets WORLD_SIZE=1 and `run` trains without a process group
# (engine/core/distributed.py), so the second step makes the group itself: NCCL with one
# rank, the trainer's data-parallel path (its all-reduces), three steps of EW and PCGrad.
DDP_STEPS='
import sys
from pathlib import Path
import torch, torch.distributed as dist
sys.path.insert(0, str(Path.cwd()))
from engine.core.distributed import World
from engine.core.gradients.stats import EpochStats
from engine.core.trainer import Trainer
from engine.runs.runner import build_requests, make_benchmark
dist.init_process_group(backend="nccl")
torch.cuda.set_device(0)
device = torch.device("cuda:0")
world = World(dist.get_rank(), dist.get_world_size())
print("process group:", dist.get_backend(), "world size", world.size)
requests = build_requests("scenes", ["ew", "pcgrad"], [0], "quick",
                          ["data.size=64", "data.train_size=64", "data.val_size=16",
                           "data.test_size=16", "train.batch_size=16"], "cuda", None)
bench = make_benchmark(requests[0].config, device)
for request in requests:
    trainer = Trainer(request.config, bench, request.composition, device, Path("/nonexistent"),
                      progress=False, world=world)
    trainer.model.train()
    batches = bench.batches("train", 16, torch.Generator().manual_seed(0))
    for _, batch in zip(range(3), batches):
        trainer.train_step(batch, 0, EpochStats())
    torch.cuda.synchronize()
    norm = trainer.engine.shared_grads.buffer.norm().item()
    print(f"{request.method_name}: 3 data-parallel steps, shared gradient norm {norm:.4g}")
dist.barrier()
dist.destroy_process_group()
'
if [ "$DEVICE" = cpu ]; then
    skip "NCCL process group (torchrun, 1 process)" "CUDA-only (NCCL needs a GPU; tests/test_distributed.py covers the gloo path on the CPU)"
elif ! command -v torchrun > /dev/null; then
    skip "NCCL process group (torchrun, 1 process)" "torchrun is not on PATH"
else
    section "NCCL process group (torchrun, 1 process)"
    step torchrun "$LIMIT" torchrun --standalone --nproc_per_node=1 run_bench.py run -b scenes \
        -m ew pcgrad -s 0 --device "$DEVICE" $DENSE --out "$WORK/torchrun" --no-progress
    figures "$WORK/torchrun"
    say "(world size 1: run trains without a process group; the next step makes one)"
    printf '%s\n' "$DDP_STEPS" > "$WORK/ddp_steps.py"
    step nccl-group "$LIMIT" torchrun --standalone --nproc_per_node=1 "$WORK/ddp_steps.py"
fi

section "NYUv2-size model: perf, EW PCGrad Rep-MTL"
say "$NYU_NOTE"
if step nyuv2-fixture 120 "$PY" benchmarks/scripts/nyuv2_fixture.py "$WORK/nyuv2" $NYU_FIXTURE; then
    TAIL=30 step nyuv2-perf 240 "$PY" run_bench.py perf -b nyuv2 --data-root "$WORK/nyuv2" \
        --device "$DEVICE" -m ew pcgrad repmtl $NYU --out "$WORK/perf"
fi

section "Jacobian methods on ResNet-18 (vs_torchjd.py)"
say "$JAC_NOTE"
HARNESS_ONLY=""
if ! "$PY" -c "import torchjd" 2> /dev/null; then
    HARNESS_ONLY="--harness-only"
    say "torchjd is not installed: the harness's side and the floors only"
fi
TAIL=40 step vs-torchjd 240 "$PY" benchmarks/scripts/vs_torchjd.py --device "$DEVICE" \
    $JAC $HARNESS_ONLY --json "$WORK/vs_torchjd.json"

section "summary"
if [ $FAILED -eq 0 ]; then say "every step that ran passed"; else say "some steps FAILED or TIMED OUT (see above)"; fi
echo "gpu_checks: figures in $FILE"
exit $FAILED
