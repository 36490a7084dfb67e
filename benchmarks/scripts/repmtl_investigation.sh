#!/usr/bin/env bash
# Controlled Rep-MTL runs on digits_tasks (quick profile, 3 seeds): each line changes one
# thing against the default repmtl run (λ_tsr = λ_csa = 0.9, τ = 0.1, no warm-up). The
# comparison with ew and stl comes from the default `python run_bench.py` run in the same
# results folder. docs/repmtl.md reports the outcome.
#   bash benchmarks/scripts/repmtl_investigation.sh [RESULTS_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-results}"
run() { python run_bench.py run -b digits_tasks -m repmtl -s 0 1 2 --out "$out" --no-progress "$@"; }
for lam in 0.01 0.1 0.3; do
  run --set method.repmtl.lambda_tsr=$lam --set method.repmtl.lambda_csa=$lam
done
run --set method.repmtl.warmup_epochs=4
run --set method.repmtl.saliency=log_loss
run --set method.repmtl.log_losses=true
run --set method.repmtl.tau=1.0
python run_bench.py report "$out" --out "$out/report_repmtl" --format md
