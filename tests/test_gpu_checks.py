"""benchmarks/scripts/gpu_checks.sh in its CPU mode: every section is written, each step
records how it ended, the CUDA-only ones say they are skipped."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "scripts" / "gpu_checks.sh"
SECTIONS = ("environment", "bf16 autocast", "fp16 with loss scaling", "channels_last",
            "torch.compile", "allocator peak memory", "NCCL process group (torchrun, 1 process)",
            "NYUv2-size model: perf, EW PCGrad Rep-MTL",
            "Jacobian methods on ResNet-18 (vs_torchjd.py)", "summary")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_cpu_mode_writes_every_section(tmp_path):
    out = tmp_path / "checks.txt"
    # A small budget: the later steps say their budget is spent, which is what is checked.
    env = {**os.environ, "BUDGET_S": "40", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=170)
    text = out.read_text()
    headers = [line[3:-3] for line in text.splitlines() if line.startswith("== ")]
    for name in SECTIONS:
        assert any(h.startswith(name) for h in headers), (name, headers)
    nccl = text.split("== NCCL process group")[1].split("\n== ")[0]
    assert "skipped: CUDA-only" in nccl
    # Each scenes run reports its figures (status, steps, peak memory) from summary.json.
    bf16 = text.split("== bf16 autocast ==")[1].split("\n== ")[0]
    assert "figures: scenes ew: complete" in bf16 and "peak memory" in bf16
    # Every section that runs something records how it ended.
    for block in text.split("\n== ")[1:-1]:
        assert "status: " in block or "skipped: " in block, block[:500]
    assert proc.returncode in (0, 1) and "\n== summary ==\n" in text
