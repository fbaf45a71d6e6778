"""Ray Serve model multiplexing over vramswap: many models, a pool of replicas, one host copy.

Beyond one machine, which model goes to which replica is the serving layer's job; vramswap does
what happens inside a machine (docs/design.md, "Beyond one machine"). Here Ray Serve's
``@serve.multiplexed`` routes each request to a replica that holds its model (by the
``multiplexed_model_id``) and evicts the least recently used model of a replica past
``max_num_models_per_replica``. Each replica is one vramswap engine on the machine's device; the
machine runs one store (``vramswap store serve``) that every replica's engine attaches to
(``VRAMSWAP_STORE``):

- the model-load function registers the model with the replica's engine and acquires it: the
  store reads it from disk the first time any replica asks, and every later load, on any
  replica, attaches to that one host copy and swaps it in;
- Ray's eviction (it calls the model's ``__del__``) offloads the model: its device memory goes,
  its host copy stays in the store for the next replica that wants it.

Run it (on CPU it uses the simulated device; a local Ray instance, two replicas)::

    python examples/python/ray_serve_multiplex.py --vramswap target/debug/vramswap

It checks every answer against NumPy and that each model was read from disk once, whatever the
replicas did, and prints the store's status. CI runs it (python/tests/test_examples.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import vramswap


class Model:
    """One model as a replica holds it: registered with the replica's engine, its host copy in
    the store. Ray Serve calls ``__del__`` when it evicts the model from the replica."""

    def __init__(self, engine: vramswap.Engine, model_id: str, path: Path):
        self.engine, self.id = engine, model_id
        if model_id not in engine.names():
            engine.register(model_id, path)
        with engine.acquire(model_id):  # from the store (or disk, once), onto the device
            pass

    def predict(self, x: list) -> float:
        with self.engine.acquire(self.id) as h:
            w = h.to_numpy("w")  # a read-back here; a CUDA engine hands tensors to PyTorch instead
            return float(np.dot(w[: len(x)], np.asarray(x, dtype=np.float32)))

    def __del__(self):
        try:
            self.engine.offload(self.id)  # device memory freed; the store keeps the host copy
        except vramswap.Error:
            pass


def deployment(models_dir: str, store: str, per_replica: int):
    from ray import serve

    # At most 2 requests in flight per replica (Ray's default has changed between versions): a
    # burst of 8 for one model spreads over both replicas.
    @serve.deployment(num_replicas=2, max_ongoing_requests=2, ray_actor_options={"num_cpus": 0})
    class Multiplexed:
        def __init__(self):
            self.engine = vramswap.Engine(store=store)
            self.dir = Path(models_dir)

        @serve.multiplexed(max_num_models_per_replica=per_replica)
        async def get_model(self, model_id: str) -> Model:
            return Model(self.engine, model_id, self.dir / f"{model_id}.safetensors")

        async def __call__(self, x: list) -> dict:
            model = await self.get_model(serve.get_multiplexed_model_id())
            c = self.engine.status()["counters"]
            return {"model": model.id, "y": model.predict(x), "replica": os.getpid(), "loads": c["loads"]}

    return Multiplexed.bind()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vramswap", default=os.environ.get("VRAMSWAP_EXE", "vramswap"), help="the vramswap executable")
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--burst", type=int, default=8, help="concurrent requests per model in turn")
    ap.add_argument("--per-replica", type=int, default=1, help="max_num_models_per_replica")
    args = ap.parse_args()

    import ray
    from ray import serve

    tmp = Path(tempfile.mkdtemp(prefix="vramswap-ray-"))
    rng = np.random.default_rng(0)
    weights = {}
    for i in range(args.models):
        w = rng.standard_normal(4096).astype(np.float32)
        weights[f"m{i}"] = w
        vramswap.save_safetensors(tmp / f"m{i}.safetensors", {"w": w})
    sock = tmp / "store.sock"
    store = subprocess.Popen([args.vramswap, "store", "serve", "--socket", str(sock)], env={**os.environ, "RUST_LOG": "warn"})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                vramswap.store_status(sock)
                break
            except vramswap.StoreError:
                if time.monotonic() > deadline or store.poll() is not None:
                    raise
                time.sleep(0.05)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        handle = serve.run(deployment(str(tmp), str(sock), args.per_replica), name="vramswap", route_prefix=None)
        x = [1.0, -2.0, 0.5]
        replicas = set()
        # Bursts of concurrent requests for one model at a time: more than one replica serves
        # a model that way (the router spreads a burst past a busy replica), and each model
        # follows another, so replicas evict models and load them again.
        for r in range(args.requests // args.burst):
            mid = f"m{r % args.models}"
            calls = [handle.options(multiplexed_model_id=mid).remote(x) for _ in range(args.burst)]
            want = float(np.dot(weights[mid][:3], np.asarray(x, dtype=np.float32)))
            for call in calls:
                out = call.result(timeout_s=120)
                assert out["model"] == mid and abs(out["y"] - want) < 1e-6, (out, want)
                assert out["loads"] == 0, "a replica's engine never reads the disk itself"
                replicas.add(out["replica"])
        s = vramswap.store_status(sock)
        print(f"{args.requests} requests, {args.models} models, {len(replicas)} replicas")
        print("store:", {k: s["counters"][k] for k in ("loads", "attaches", "evictions")}, f"host_used={s['host_used']}")
        for st in s["sets"]:
            print(f"  {st['name']}: {st['bytes']} bytes, {st['clients']} clients")
        assert s["counters"]["loads"] == args.models, "each model read from disk once, for every replica"
        assert len(replicas) == 2, "both replicas served"
        assert s["counters"]["attaches"] > 0, "a model one replica loaded, another attached to"
        serve.shutdown()
        ray.shutdown()
    finally:
        store.terminate()
        store.wait(timeout=10)
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
