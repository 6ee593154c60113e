"""benchmarks/gpu.sh, the device check, kept runnable: its smoke mode on the CPU prints every row."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_device_check_runs_on_the_cpu_at_toy_sizes():
    result = subprocess.run(["bash", "benchmarks/gpu.sh", "--device", "cpu", "--tiny"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr[-2000:]
    rows = result.stdout
    for name in ("encoding (two matrix products)", "direct formula", "torch.compile(encoding)", "FCN float32",
                 "EncNet bf16 autocast", "Host synchronisations per training step"):
        assert name in rows, rows
    assert rows.count("images/s") == 6, rows  # 2 models x 2 precisions on the CPU, 2 inference rows
