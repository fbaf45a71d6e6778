"""A FastAPI service with the GPU manager of seed 003 (lazy load, offload after each task, idle
timeout, status/offload/release endpoints) around a real transformers model, on vramswap.

    MODEL_PATH=/models/my-llama GPU_IDLE_TIMEOUT=60 \\
        uvicorn --app-dir examples/python fastapi_service:app

- ``GET /api/gpu/status``: where the model is (``GPU``, ``CPU`` or ``Unloaded``), seconds idle,
  device memory allocated and reserved (GB), and the counters ``total_loads``, ``gpu_to_cpu``,
  ``cpu_to_gpu``, ``full_releases``;
- ``POST /api/gpu/offload``: device memory freed, the weights stay in pinned host memory;
- ``POST /api/gpu/release``: the model is dropped (device and host memory freed); the next task
  loads it again from ``MODEL_PATH``. Releasing an unloaded model changes nothing and counts
  nothing;
- ``POST /api/task`` ``{"input_ids": [...], "max_new_tokens": n}``: lazy load on the first
  request (``from_pretrained`` then ``vramswap.torch.adopt``), greedy ``generate()``, offload
  after.

``MODEL_PATH`` is a transformers causal-LM directory; without it a tiny random-init Llama
(seeded) is saved to a temporary directory, so the service runs anywhere. ``VRAMSWAP_BACKEND``
picks the backend (``auto``, ``cuda``, ``sim``). On ``sim`` (no GPU) the example turns on the
simulator's host-visible memory (``VRAMSWAP_SIM_CONF=host_visible:true``), so the same code runs
the model on CPU PyTorch over the engine's memory.
"""

import os
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import List, Optional

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

import vramswap
import vramswap.torch as vt

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
    """A request: prompt token ids, and how many tokens to generate."""

    input_ids: List[int] = Field(default_factory=lambda: [1, 5, 9, 13])
    max_new_tokens: int = Field(default=4, ge=1, le=64)


def demo_model(directory: Path) -> Path:
    """A tiny random-init Llama (seeded), saved as a transformers model directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    LlamaForCausalLM(cfg).save_pretrained(directory)
    return directory


class Manager:
    """The model behind the service: loaded lazily, adopted into the engine, dropped on release.
    ``total_loads`` and ``full_releases`` count what this manager did; the swap counters are the
    engine's."""

    def __init__(self, engine: vramswap.Engine, path: Path, device: str):
        self.engine, self.path, self.device = engine, path, device
        self.lock = threading.Lock()
        self.model = None
        self.adopted = None
        self.total_loads = 0
        self.full_releases = 0

    def model_for_task(self):
        """The adopted model, loading it first if it is not (the lazy load)."""
        with self.lock:
            if self.model is None:
                from transformers import AutoModelForCausalLM

                model = AutoModelForCausalLM.from_pretrained(self.path).eval()
                self.adopted = vt.adopt(self.engine, MODEL, model)
                self.model = model
                self.total_loads += 1
            return self.model

    def release(self) -> None:
        """Drops the model and its memory; a release of an unloaded model counts nothing."""
        with self.lock:
            if self.model is None:
                return
            self.adopted.remove_hooks()
            self.engine.unregister(MODEL)
            self.model = self.adopted = None
            self.full_releases += 1

    def status(self) -> dict:
        """The seed's status document, from the engine's status and the allocator's statistics."""
        st = self.engine.status()
        model = next((s for s in st["sets"] if s["name"] == MODEL), None)
        location = LOCATION[model["state"]] if model else "Unloaded"
        alloc = self.engine.stats()
        c = st["counters"]
        return {
            "model_location": location,
            "idle_time": round(model["idle_secs"], 1) if model else 0.0,
            # Weights on the device plus what the caching allocator handed out; reserved adds
            # the mapping granularity of the weights and the allocator's cache.
            "gpu_memory_allocated_gb": round(
                ((model["bytes"] if location == "GPU" else 0) + alloc["allocated_bytes"]["current"]) / GB, 3
            ),
            "gpu_memory_reserved_gb": round((st["device_used"] + alloc["reserved_bytes"]["current"]) / GB, 3),
            "statistics": {
                "total_loads": self.total_loads,
                "gpu_to_cpu": c["d2h_swaps"],
                "cpu_to_gpu": c["h2d_swaps"],
                "full_releases": self.full_releases,
            },
        }


def create_app(model_path=None, backend=None, idle_timeout=None) -> FastAPI:
    """The service; the engine is made at startup and closed at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        timeout = idle_timeout if idle_timeout is not None else float(os.environ.get("GPU_IDLE_TIMEOUT", "60"))
        choice = backend or os.environ.get("VRAMSWAP_BACKEND", "auto")
        if choice == "sim" or (choice == "auto" and not torch.cuda.is_available()):
            # No GPU: the simulated device with host-visible memory runs the model on CPU PyTorch.
            os.environ.setdefault("VRAMSWAP_SIM_CONF", "host_visible:true")
        with tempfile.TemporaryDirectory() as tmp:
            path = model_path or os.environ.get("MODEL_PATH") or demo_model(Path(tmp))
            with vramswap.Engine(backend=choice, idle_timeout=timeout) as engine:
                device = "cuda" if engine.backend == "cuda" else "cpu"
                app.state.engine = engine
                app.state.manager = Manager(engine, Path(path), device)
                yield
                app.state.manager.release()

    app = FastAPI(title="vramswap GPU service", lifespan=lifespan)

    @app.exception_handler(vramswap.Error)
    async def vramswap_error(request: Request, exc: vramswap.Error):
        code = {"not_found": 404, "out_of_memory": 507, "invalid_state": 409}.get(exc.kind, 500)
        return JSONResponse(status_code=code, content={"error": exc.kind, "detail": str(exc)})

    # Plain `def` endpoints: FastAPI runs them on its thread pool, and the engine releases the
    # GIL while it copies, so a swap-in does not stall the other requests.
    @app.get("/api/gpu/status")
    def status():
        return app.state.manager.status()

    @app.post("/api/gpu/offload")
    def offload():
        m = app.state.manager
        if m.model is not None:
            app.state.engine.offload(MODEL)
        return m.status()

    @app.post("/api/gpu/release")
    def release():
        app.state.manager.release()
        return app.state.manager.status()

    @app.post("/api/task")
    def task(req: Task):
        m = app.state.manager
        model = m.model_for_task()
        vocab = model.config.vocab_size
        if any(not 0 <= i < vocab for i in req.input_ids):
            return JSONResponse(status_code=400, content={
                "error": "invalid_argument", "detail": f"token ids must be in [0, {vocab})"})
        start = time.perf_counter()
        try:
            ids = torch.tensor([req.input_ids], device=m.device)
            with torch.no_grad():  # the adopt hooks swap the weights in
                out = model.generate(ids, max_new_tokens=req.max_new_tokens, do_sample=False,
                                     pad_token_id=0)
        finally:
            app.state.engine.offload(MODEL)  # instant offload after the task, on errors too
        return {"output_ids": out[0].tolist(), "seconds": round(time.perf_counter() - start, 4),
                "status": m.status()}

    return app


app = create_app()
