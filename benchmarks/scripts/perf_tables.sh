#!/usr/bin/env bash
# Reproduces the measured tables of docs/performance.md on a quiet machine (load average
# below about 2.5): every registered method on scenes and digits_tasks, Rep-MTL on the
# paper's NYUv2 model (random fixture data), and the scaling in the number of tasks.
# Usage: bash benchmarks/scripts/perf_tables.sh [OUT_DIR]   (about 30 minutes on 2 cores)
# Each result's Markdown table with targets: python benchmarks/scripts/perf_doc_table.py OUT_DIR/*.json
set -euo pipefail
OUT=${1:-results/perf}
WEIGHTINGS="dwa famo gls gradnorm igbv2 imtl_l rlw stch uw"
REPRESENTATION="mgda_ub graddrop aligned_mtl_ub repmtl"
JACOBIAN="pcgrad mgda cagrad nashmtl imtl imtl_g aligned_mtl upgrad dbmtl gradvac fairgrad metabalance moco"
# MTAdam is refused under any optimizer but plain SGD: measured on its own (with ew, under SGD).
MTADAM_SGD="--set train.optimizer=sgd --set train.momentum=0 --set train.weight_decay=0"

test -d /tmp/nyuv2_fixture || python benchmarks/scripts/nyuv2_fixture.py /tmp/nyuv2_fixture
python run_bench.py perf -b nyuv2 --profile paper --data-root /tmp/nyuv2_fixture \
    --set data.weights=none -m repmtl --batch-size 8 --steps 3 --warmup 1 --out "$OUT"
python run_bench.py perf -b scenes -m $WEIGHTINGS $REPRESENTATION $JACOBIAN \
    --steps 15 --warmup 3 --out "$OUT"
python run_bench.py perf -b digits_tasks -m $WEIGHTINGS $REPRESENTATION $JACOBIAN \
    --steps 15 --warmup 3 --out "$OUT"
for BENCH in scenes digits_tasks; do
    python run_bench.py perf -b $BENCH -m mtadam $MTADAM_SGD --steps 15 --warmup 3 --out "$OUT"
done
python run_bench.py perf -b synthetic --set data.sigmas=[] \
    -m uw famo mgda_ub graddrop repmtl pcgrad mgda cagrad nashmtl imtl_g aligned_mtl upgrad dbmtl gradvac fairgrad \
    --scale data.num_tasks=2,4,8,16,32,64 --steps 8 --warmup 2 --plot docs/perf_scaling.png --out "$OUT"
