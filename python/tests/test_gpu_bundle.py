"""The GPU bundle's Python step (scripts/gpu_torch_adopt.py), dry-run on CPU PyTorch over the
host-visible simulated device: every step a lent GPU runs, bar the `.to()` baselines, so a bug in
the script costs a CI run and not a GPU lease (the first H200 run lost its adopt step to one)."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_torch_adopt.py"


def test_the_adopt_step_runs_end_to_end_on_cpu(tmp_path):
    out_json = tmp_path / "torch-adopt.json"
    env = dict(os.environ, VRAMSWAP_SIM_CONF="host_visible:true,capacity_gb:1", HF_HUB_OFFLINE="1")
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--sizes-gb", "0.02,0.05", "--repeats", "2",
         "--json", str(out_json)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    models = json.loads(out_json.read_text())["models"]
    assert [m["device"] for m in models] == ["cpu", "cpu"]
    for m in models:
        assert m["outputs_equal_before_swaps"] and m["outputs_equal_after_swaps"], m
        assert m["swap_in_s"] > 0 and m["swap_out_s"] > 0 and m["reinstantiate_s"] > 0, m
        assert m["to_cuda_s"] is None and m["to_cpu_s"] is None  # no GPU baselines on CPU
    assert models[1]["size_gb"] > models[0]["size_gb"] > 0
    assert "LEAK" not in out.stdout, out.stdout


def test_the_report_renders_the_dry_runs_json(tmp_path):
    """gpu_report.py reads what the adopt step wrote, None baselines included."""
    (tmp_path / "torch-adopt.json").write_text(json.dumps({"models": [{
        "size_gb": 0.02, "swap_in_s": 0.003, "swap_out_s": 0.0003, "to_cuda_s": None,
        "to_cpu_s": None, "reinstantiate_s": 0.03, "outputs_equal_before_swaps": True,
        "outputs_equal_after_swaps": True, "device": "cpu"}]}))
    (tmp_path / "steps.txt").write_text("torch-adopt pass\n")
    report = SCRIPT.parent / "gpu_report.py"
    out = subprocess.run([sys.executable, str(report), str(tmp_path), str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "| 0.02 | 6.67 |" in out.stdout, out.stdout  # 0.02 GB in 3 ms
