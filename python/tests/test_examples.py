"""The examples of examples/python, run on the simulated device."""

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "python"


def test_round_robin_cycles_more_sets_than_the_budget_holds():
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "round_robin.py"), "--backend", "sim", "--models", "4",
         "--mb", "8", "--fit", "2", "--rounds", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert sum("swap-in" in l and "GB/s" in l for l in lines) >= 4, out.stdout
    counters = next(l for l in lines if l.startswith("counters:"))
    fields = dict(f.split("=") for f in counters.split()[1:])
    assert int(fields["h2d_swaps"]) >= 8 and int(fields["evictions"]) >= 6


@pytest.fixture
def service():
    pytest.importorskip("fastapi", reason="FastAPI is not installed")
    from fastapi.testclient import TestClient

    spec = importlib.util.spec_from_file_location("fastapi_service", EXAMPLES / "fastapi_service.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, TestClient


def test_the_service_runs_a_real_model_loads_lazily_offloads_after_tasks_and_releases(service, monkeypatch):
    mod, TestClient = service
    monkeypatch.setenv("VRAMSWAP_SIM_CONF", "host_visible:true")
    app = mod.create_app(backend="sim", idle_timeout=3600)
    with TestClient(app) as client:
        st = client.get("/api/gpu/status").json()
        assert set(st) == {"model_location", "idle_time", "gpu_memory_allocated_gb",
                           "gpu_memory_reserved_gb", "statistics"}
        assert st["model_location"] == "Unloaded"
        assert st["statistics"] == {"total_loads": 0, "gpu_to_cpu": 0, "cpu_to_gpu": 0, "full_releases": 0}

        r = client.post("/api/task", json={"input_ids": [1, 2, 3], "max_new_tokens": 3})
        assert r.status_code == 200, r.text
        first = r.json()["output_ids"]
        assert first[:3] == [1, 2, 3] and len(first) == 6
        assert r.json()["status"]["model_location"] == "CPU"  # offloaded after the task
        # The same model, swapped back in, generates the same tokens.
        again = client.post("/api/task", json={"input_ids": [1, 2, 3], "max_new_tokens": 3}).json()
        assert again["output_ids"] == first
        st = client.get("/api/gpu/status").json()
        assert st["statistics"]["total_loads"] == 1 and st["statistics"]["full_releases"] == 0
        assert st["statistics"]["cpu_to_gpu"] >= 2 and st["statistics"]["gpu_to_cpu"] >= 1
        assert st["gpu_memory_allocated_gb"] == 0 and st["idle_time"] >= 0

        st = client.post("/api/gpu/release").json()
        assert st["model_location"] == "Unloaded" and st["statistics"]["full_releases"] == 1
        st = client.post("/api/gpu/release").json()  # already released: not counted again
        assert st["model_location"] == "Unloaded" and st["statistics"]["full_releases"] == 1
        r = client.post("/api/task", json={"input_ids": [1, 2, 3], "max_new_tokens": 3}).json()
        assert r["output_ids"] == first  # reloaded from the model directory
        assert client.get("/api/gpu/status").json()["statistics"]["total_loads"] == 2

        st = client.post("/api/gpu/offload").json()
        assert st["model_location"] == "CPU"
        r = client.post("/api/task", json={"input_ids": [100000]})
        assert r.status_code == 400 and r.json()["error"] == "invalid_argument"


def test_the_idle_timeout_comes_from_the_environment(service, monkeypatch):
    mod, TestClient = service
    monkeypatch.setenv("GPU_IDLE_TIMEOUT", "0.05")
    monkeypatch.setenv("VRAMSWAP_SIM_CONF", "host_visible:true")
    app = mod.create_app(backend="sim")
    with TestClient(app) as client:
        assert client.post("/api/task", json={}).status_code == 200
        app.state.engine.acquire(mod.MODEL).release()  # on the device, idle
        deadline = time.monotonic() + 30
        while client.get("/api/gpu/status").json()["model_location"] != "CPU":
            assert time.monotonic() < deadline, "the idle monitor never offloaded the model"
            time.sleep(0.02)
        assert client.get("/api/gpu/status").json()["statistics"]["gpu_to_cpu"] >= 1


def run_example(script, *args):
    env = dict(os.environ, VRAMSWAP_SIM_CONF="host_visible:true", HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, str(EXAMPLES / script), "--backend", "sim", *args],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.splitlines()


def test_swap_on_transition_swaps_only_the_active_model_and_times_the_baseline():
    lines = run_example("swap_on_transition.py", "--cycles", "2", "--batch", "3")
    rows = [l for l in lines if "->" in l]
    assert [r.split()[0] for r in rows] == ["-->t2i", "t2i->i2t", "i2t->t2i", "t2i->i2t"], lines
    for r in rows:
        swap_ms, base_ms = float(r.split()[1]), float(r.split()[2])
        assert swap_ms > 0 and base_ms > 0
    assert lines[-1].startswith("counters:") and "outputs identical" in lines[-1]


def test_model_pool_serves_every_request_correctly_under_the_budget():
    lines = run_example("model_pool.py", "--models", "4", "--fit", "2", "--requests", "16")
    counters = dict(f.split("=") for f in lines[-1].split()[1:])
    assert counters["requests"] == counters["correct"] == "16"
    assert int(counters["evictions"]) >= 1
    states = [l.split()[-1] for l in lines if l.startswith("lm")]
    assert states.count("on_device") <= 2 and len(states) == 4


def test_ray_serve_multiplexing_reads_each_model_once_for_every_replica():
    """examples/python/ray_serve_multiplex.py on a local Ray instance with two replicas (Ray
    Serve from the package index, installed by scripts/test.sh: a missing Ray fails here)."""
    import ray  # noqa: F401  (fails, not skips, without Ray)

    exe = os.environ.get("VRAMSWAP_EXE") or str(EXAMPLES.parents[1] / "target" / "debug" / "vramswap")
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "ray_serve_multiplex.py"), "--vramswap", exe],
        capture_output=True, text=True, timeout=600, env={**os.environ, "VRAMSWAP_BACKEND": "sim"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.rstrip().endswith("ok"), out.stdout
    assert "2 replicas" in out.stdout and "'loads': 4" in out.stdout, out.stdout
