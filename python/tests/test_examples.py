"""The examples of examples/python, run on the simulated device."""

import importlib.util
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


def test_the_service_loads_lazily_offloads_after_tasks_and_releases(service):
    mod, TestClient = service
    app = mod.create_app(backend="sim", idle_timeout=3600)
    with TestClient(app) as client:
        st = client.get("/api/gpu/status").json()
        assert set(st) == {"model_location", "idle_time", "gpu_memory_allocated_gb",
                           "gpu_memory_reserved_gb", "statistics"}
        assert st["model_location"] == "Unloaded"
        assert st["statistics"] == {"total_loads": 0, "gpu_to_cpu": 0, "cpu_to_gpu": 0, "full_releases": 0}

        r = client.post("/api/task", json={})
        assert r.status_code == 200, r.text
        assert r.json()["status"]["model_location"] == "CPU"  # offloaded after the task
        client.post("/api/task", json={"tensor": "layers.1.weight"})
        st = client.get("/api/gpu/status").json()
        assert st["statistics"] == {"total_loads": 1, "gpu_to_cpu": 2, "cpu_to_gpu": 2, "full_releases": 0}
        assert st["gpu_memory_allocated_gb"] == 0 and st["idle_time"] >= 0

        st = client.post("/api/gpu/release").json()
        assert st["model_location"] == "Unloaded" and st["statistics"]["full_releases"] == 1
        st = client.post("/api/gpu/release").json()  # already released: not counted again
        assert st["model_location"] == "Unloaded" and st["statistics"]["full_releases"] == 1
        client.post("/api/task", json={})
        assert client.get("/api/gpu/status").json()["statistics"]["total_loads"] == 2

        st = client.post("/api/gpu/offload").json()
        assert st["model_location"] == "CPU"
        r = client.post("/api/task", json={"tensor": "nope"})
        assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_the_idle_timeout_comes_from_the_environment(service, monkeypatch):
    mod, TestClient = service
    monkeypatch.setenv("GPU_IDLE_TIMEOUT", "0.05")
    app = mod.create_app(backend="sim")
    with TestClient(app) as client:
        engine = app.state.engine
        engine.acquire(mod.MODEL).release()  # on the device, idle
        deadline = time.monotonic() + 30
        while client.get("/api/gpu/status").json()["model_location"] != "CPU":
            assert time.monotonic() < deadline, "the idle monitor never offloaded the model"
            time.sleep(0.02)
        assert client.get("/api/gpu/status").json()["statistics"]["gpu_to_cpu"] == 1
