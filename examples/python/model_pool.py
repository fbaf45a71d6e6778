"""Seed 002: a pool of small language models resident under a device budget, least recently used
evicted, requests routed by model name, some arriving while another model is being swapped in.

    python examples/python/model_pool.py --models 4 --fit 2 --requests 24

Each model is a tiny random-init Llama (seeded, no download) adopted into one engine whose
``device_budget`` holds ``--fit`` of them; a thread pool sends requests naming a model. The
engine brings the named model in (evicting the least recently used idle one) while requests for
resident models keep running. It prints, per model, the requests served, and the engine's swap
and eviction counters; every answer is checked against the same model's answer before any swap.

No GPU: CPU PyTorch over the simulated device with host-visible memory; ``--backend cuda`` runs
the same code on a GPU.
"""

import argparse
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

import vramswap
import vramswap.torch as vt


def tiny_lm(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def set_bytes(model) -> int:
    uniq = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in uniq.values())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", default=os.environ.get("VRAMSWAP_BACKEND", "auto"))
    p.add_argument("--models", type=int, default=4)
    p.add_argument("--fit", type=int, default=2, help="models the device budget holds")
    p.add_argument("--requests", type=int, default=24)
    a = p.parse_args(argv)
    if a.backend == "sim" or (a.backend == "auto" and not torch.cuda.is_available()):
        os.environ.setdefault("VRAMSWAP_SIM_CONF", "host_visible:true")
    models = {f"lm{i}": tiny_lm(i) for i in range(a.models)}
    # Device bytes of one set: its bytes rounded up to the mapping granularity (2 MiB).
    gran = 2 << 20
    per_set = max(-(-set_bytes(m) // gran) * gran for m in models.values())
    budget = per_set * a.fit
    prompt = torch.tensor([[1, 7, 11, 3]])
    refs = {}
    with vramswap.Engine(backend=a.backend, device_budget=budget) as engine:
        device = torch.device("cuda" if engine.backend == "cuda" else "cpu")
        with torch.no_grad():
            for name, m in models.items():
                m.to(device)
                refs[name] = m(prompt.to(device)).logits.argmax(-1).cpu()
                vt.adopt(engine, name, m)
        rng = np.random.default_rng(0)
        # A skewed mix: two hot models and the rest cold, so LRU has something to keep.
        weights = np.array([4.0, 3.0] + [1.0] * (a.models - 2))[: a.models]
        order = rng.choice(list(models), size=a.requests, p=weights / weights.sum())
        served = {n: 0 for n in models}
        lock = threading.Lock()
        over_budget = []

        def handle(name):
            with torch.no_grad():
                out = models[name](prompt.to(device)).logits.argmax(-1).cpu()
            used = engine.status()["device_used"]
            with lock:
                served[name] += 1
                if used > budget:
                    over_budget.append(used)
            return bool(torch.equal(out, refs[name]))

        for n in models:
            engine.offload(n)
        # As many workers as models fit: each request holds its model on the device while it
        # runs, and the engine refuses (OutOfMemoryError) rather than waits when every resident
        # model is in use; a server with more workers would queue requests per model.
        with ThreadPoolExecutor(a.fit) as pool:
            ok = list(pool.map(handle, order))
        st = engine.status()
        c = st["counters"]
        print(f"backend={engine.backend} models={a.models} budget={budget} bytes (fits {a.fit})")
        print(f"{'model':<6} {'requests':>8} {'state':>10}")
        for s in sorted(st["sets"], key=lambda s: s["name"]):
            print(f"{s['name']:<6} {served[s['name']]:>8} {s['state']:>10}")
        print(f"counters: h2d_swaps={c['h2d_swaps']} d2h_swaps={c['d2h_swaps']} "
              f"evictions={c['evictions']} requests={len(ok)} correct={sum(ok)}")
        resident = sum(s["state"] == "on_device" for s in st["sets"])
        if not all(ok) or over_budget or resident > a.fit:
            print(f"error: wrong answers={len(ok) - sum(ok)}, over budget={over_budget}, "
                  f"resident={resident}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
