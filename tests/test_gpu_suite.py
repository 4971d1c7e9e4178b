"""benchmarks/gpu_suite.py at its toy size on the CPU: every part runs and writes its JSON and Markdown, so the
script is known to work before a GPU is available (PyTorch parts where torch is installed)."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).parent.parent / "benchmarks" / "gpu_suite.py"


@pytest.mark.slow
def test_the_gpu_suite_dry_run_on_the_cpu(tmp_path):
    result = subprocess.run([sys.executable, str(SUITE), "--tiny", "--out", str(tmp_path)], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    r = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert set(r["matmul_flops"]) == {"float32", "tf32", "bf16"} and min(r["matmul_flops"].values()) > 0
    rows = r["resnet"]["rows"]
    assert {row["strategy"] for row in rows} == {"grouped", "map", "im2col"}
    for row in rows:
        assert row["model_steps_per_s"] > 0 and row["images_per_s"] == row["model_steps_per_s"] * 8, row
        assert 0 < row["fraction_of_measured_matmul"] and row["diverged"] == 0
    # every strategy trains the same models: the first epoch's losses agree to bfloat16 rounding
    losses = [row["epoch0_loss"] for row in rows]
    assert max(abs(a - b) for other in losses for a, b in zip(other, losses[0])) < 0.05, losses
    assert r["resnet"]["fastest_strategy"] and r["projection"]["bf16"]["total_seconds"] > 0
    assert "error" not in r["mlp"] and "error" not in r["hessian"], (r["mlp"], r["hessian"])
    assert r["hessian"]["default"]["top_error"]["max"] < 1e-3  # against the float64 dense Hessian
    if importlib.util.find_spec("torch") is not None:
        assert r["mlp"]["widths"]["8"]["final_loss_max_diff"] < 1e-4  # PyTorch trained the same models
        assert all("speedup_vs_pytorch" in row for row in rows)
        # torch.func's ResNet ensemble: run, or its failure recorded (bfloat16 autocast through a vmapped
        # BatchNorm fails on the CPU in torch 2.13), never the suite's
        assert r["resnet"]["torch_func"]
        for v in r["resnet"]["torch_func"].values():
            assert "error" in v or max(abs(a - b) for a, b in zip(v["epoch0_loss"], rows[0]["epoch0_loss"])) < 0.05
        assert "speedup_vs_pyhessian" in r["hessian"]["matched"]
        # PyTorch's own ensembling (torch.func) trained the same models and ran the same HVP procedure
        assert r["mlp"]["widths"]["8"]["torch_func_final_loss_max_diff"] < 1e-4
        assert r["mlp"]["widths"]["8"]["speedup_vs_torch_func"] > 0
        assert r["hessian"]["torch_func"]["top_error"]["max"] < 0.5
        assert "speedup_vs_torch_func" in r["hessian"]["matched"]
    md = (tmp_path / "gpu_suite.md").read_text()
    assert "| 2 | 2 | map | bf16 |" in md and "Fastest strategy" in md
