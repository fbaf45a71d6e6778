"""A FastAPI service with the GPU manager of the seeds (lazy load, offload after each task, idle
timeout, status/offload/release endpoints), on vramswap's engine.

    MODEL_PATH=/models/flux.safetensors GPU_IDLE_TIMEOUT=60 \\
        uvicorn --app-dir examples/python fastapi_service:app

- ``GET /api/gpu/status``: where the model is (``GPU``, ``CPU`` or ``Unloaded``), seconds idle,
  device memory allocated and reserved (GB), and the counters ``total_loads``, ``gpu_to_cpu``,
  ``cpu_to_gpu``, ``full_releases``;
- ``POST /api/gpu/offload``: device memory freed, the weights stay in pinned host memory;
- ``POST /api/gpu/release``: device and host memory freed; the next task reloads from disk;
- ``POST /api/task``: lazy load (from disk or host memory), run, offload after.

The idle timeout (``GPU_IDLE_TIMEOUT``, seconds, default 60) is the engine's own: its monitor
thread offloads the model once nothing has used it for that long. ``MODEL_PATH`` is a
``.safetensors`` file or a Hugging Face model directory; without it a small demo model is
written to a temporary directory. ``VRAMSWAP_BACKEND`` picks the backend (``auto``, ``cuda``,
``sim``).
"""

import os
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Optional

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

import vramswap

MODEL = "model"
GB = 1e9
LOCATION = {
    "on_device": "GPU",
    "uploading": "GPU",
    "downloading": "CPU",
    "in_host": "CPU",
    "on_disk": "Unloaded",
}


class Task(BaseModel):
    """A request: which tensor of the model to reduce (a stand-in for real inference)."""

    tensor: Optional[str] = None


def demo_model(directory: Path) -> Path:
    """A small safetensors checkpoint, so the service runs without a model at hand."""
    rng = np.random.default_rng(0)
    path = directory / "demo.safetensors"
    vramswap.save_safetensors(
        path, {f"layers.{i}.weight": rng.standard_normal((256, 256), dtype=np.float32) for i in range(4)}
    )
    return path


def gpu_status(engine: vramswap.Engine) -> dict:
    """The seeds' status document, from the engine's status and the allocator's statistics."""
    st = engine.status()
    model = next(s for s in st["sets"] if s["name"] == MODEL)
    alloc = engine.stats()
    c = st["counters"]
    return {
        "model_location": LOCATION[model["state"]],
        "idle_time": round(model["idle_secs"], 1),
        # Weights on the device plus what the caching allocator handed out; reserved adds the
        # mapping granularity of the weights and the allocator's cache.
        "gpu_memory_allocated_gb": round(
            ((model["bytes"] if LOCATION[model["state"]] == "GPU" else 0) + alloc["allocated_bytes"]["current"]) / GB, 3
        ),
        "gpu_memory_reserved_gb": round((st["device_used"] + alloc["reserved_bytes"]["current"]) / GB, 3),
        "statistics": {
            "total_loads": c["loads"],
            "gpu_to_cpu": c["d2h_swaps"],
            "cpu_to_gpu": c["h2d_swaps"],
            "full_releases": c["releases"],
        },
    }


def create_app(model_path=None, backend=None, idle_timeout=None) -> FastAPI:
    """The service; the engine is made at startup and closed at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        timeout = idle_timeout if idle_timeout is not None else float(os.environ.get("GPU_IDLE_TIMEOUT", "60"))
        with tempfile.TemporaryDirectory() as tmp:
            path = model_path or os.environ.get("MODEL_PATH") or demo_model(Path(tmp))
            with vramswap.Engine(backend=backend or "auto", idle_timeout=timeout) as engine:
                engine.register(MODEL, path)  # lazy: nothing loads before the first task
                app.state.engine = engine
                yield

    app = FastAPI(title="vramswap GPU service", lifespan=lifespan)

    @app.exception_handler(vramswap.Error)
    async def vramswap_error(request: Request, exc: vramswap.Error):
        code = {"not_found": 404, "out_of_memory": 507, "invalid_state": 409}.get(exc.kind, 500)
        return JSONResponse(status_code=code, content={"error": exc.kind, "detail": str(exc)})

    # Plain `def` endpoints: FastAPI runs them on its thread pool, and the engine releases the
    # GIL while it copies, so a swap-in does not stall the other requests.
    @app.get("/api/gpu/status")
    def status():
        return gpu_status(app.state.engine)

    @app.post("/api/gpu/offload")
    def offload():
        app.state.engine.offload(MODEL)
        return gpu_status(app.state.engine)

    @app.post("/api/gpu/release")
    def release():
        app.state.engine.release(MODEL)
        return gpu_status(app.state.engine)

    @app.post("/api/task")
    def task(req: Task):
        engine = app.state.engine
        try:
            with engine.acquire(MODEL) as h:  # lazy load: from disk, or from host memory
                name = req.tensor or h.tensors[0]["name"]
                # Real inference would run here on the device tensors (vramswap.torch.adopt);
                # the demo reads one tensor back and reduces it.
                result = float(h.to_numpy(name).astype(np.float64).sum())
        finally:
            engine.offload(MODEL)  # instant offload after the task, on errors too
        return {"tensor": name, "sum": result, "status": gpu_status(engine)}

    return app


app = create_app()
