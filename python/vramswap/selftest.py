"""``python -m vramswap.selftest``: the GPU checks of this package on a user's machine.

1. a weight set's round trip through the device (bytes equal after offload and swap-in) with the
   engine's swap-in figures;
2. with PyTorch: a model adopted by ``vramswap.torch.adopt``, offloaded and brought back by its
   wrapped forward, with outputs equal to the original model's, and the swap-in GB/s beside
   PyTorch's ``.to("cuda")`` of the same weights from pageable and from pinned memory;
3. ``vramswap.torch.use_allocator()`` in a child process (PyTorch cannot switch allocators once
   it has allocated).

Where there is no CUDA device (or no PyTorch) the checks that need it are skipped, saying why.
Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import List

import numpy as np

import vramswap


def _gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9 if seconds > 0 else float("nan")


def check_round_trip(engine: vramswap.Engine, mb: int) -> str:
    rng = np.random.default_rng(0)
    arrays = {f"w{i}": rng.standard_normal(mb * (1 << 20) // 32, dtype=np.float32) for i in range(8)}
    engine.register_arrays("selftest", arrays)
    for _ in range(2):
        with engine.acquire("selftest") as h:
            for k, a in arrays.items():
                if h.to_numpy(k).tobytes() != a.tobytes():
                    raise AssertionError(f"tensor {k} differs after the swap-in")
        engine.offload("selftest")
    c = engine.status()["counters"]
    engine.unregister("selftest")
    return f"round trip of {mb} MiB: bytes equal; swap-in {c['mean_swap_in_ms']:.1f} ms, {c['mean_swap_in_gbps']:.2f} GB/s"


def check_torch(engine: vramswap.Engine, mb: int) -> List[str]:
    import torch

    from . import torch as vt

    width = 2048
    layers = max(1, mb * (1 << 20) // (width * width * 4))
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)]).eval()
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    x = torch.randn(8, width)
    out = []

    def timed_to_cuda(state):
        torch.cuda.synchronize()
        t = time.perf_counter()
        moved = [s.to("cuda", non_blocking=True) for s in state]
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
        del moved
        return dt

    state = [p.detach() for p in model.parameters()]
    timed_to_cuda(state)  # warm-up (CUDA context, allocator)
    pageable = min(timed_to_cuda(state) for _ in range(3))
    pinned_state = [s.pin_memory() for s in state]
    pinned = min(timed_to_cuda(pinned_state) for _ in range(3))
    del pinned_state

    with torch.no_grad():
        reference = model.to("cuda")(x.cuda()).cpu()
        model.to("cpu")
        adopted = vt.adopt(engine, "selftest-torch", model)
        first = model(x.cuda()).cpu()
        swaps = []
        for _ in range(3):
            engine.offload("selftest-torch")
            torch.cuda.synchronize()
            t = time.perf_counter()
            again = model(x.cuda()).cpu()  # the forward wrapper swaps the weights back in
            swaps.append(time.perf_counter() - t)
            if not torch.equal(again, reference):
                raise AssertionError("outputs differ after an offload and swap-in")
    if not torch.equal(first, reference):
        raise AssertionError("the adopted model's output differs from the original's")
    c = engine.status()["counters"]
    out.append(f"adopt: {adopted!r}; outputs equal after {len(swaps)} offload/swap-in cycles")
    out.append(
        f"swap-in of {nbytes / 1e6:.0f} MB: vramswap {c['last_swap_in_gbps']:.2f} GB/s (copies), "
        f"forward incl. swap-in {min(swaps) * 1e3:.1f} ms; "
        f".to('cuda') pageable {_gbps(nbytes, pageable):.2f} GB/s, pinned {_gbps(nbytes, pinned):.2f} GB/s"
    )
    adopted.remove_hooks()
    return out


ALLOCATOR_CHILD = """
import torch, vramswap.torch as vt
vt.use_allocator()
x = torch.ones(1 << 20, device="cuda")
assert float(x.sum()) == float(1 << 20)
print("ok")
"""


def check_allocator() -> str:
    r = subprocess.run([sys.executable, "-c", ALLOCATOR_CHILD], capture_output=True, text=True, timeout=300)
    if r.returncode == 0:
        return "use_allocator: PyTorch allocated and computed through vramswap's allocator"
    last = (r.stderr.strip().splitlines() or ["?"])[-1]
    if "UnsupportedError" in last:
        return f"SKIP use_allocator: {last}"
    raise AssertionError(f"use_allocator failed: {last}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vramswap.selftest", description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=256, help="MiB of weights to swap")
    args = p.parse_args(argv)
    info = vramswap.info()
    print(f"vramswap {vramswap.__version__}: backend {info['backend']} ({info['selected_because']})")
    print(f"device: {info['device']['name']}, {info['memory']['free'] / 2**30:.1f} of "
          f"{info['memory']['total'] / 2**30:.1f} GiB free")
    if info["backend"] != "cuda":
        print("SKIP: no CUDA device answers here; the GPU checks need one "
              "(the pytest suite covers the same API on the simulated device)")
        return 0
    failed = 0
    with vramswap.Engine(backend="cuda") as engine:
        steps = [("round trip", lambda: [check_round_trip(engine, args.mb)])]
        try:
            import torch

            if torch.cuda.is_available():
                steps.append(("pytorch", lambda: check_torch(engine, args.mb)))
                steps.append(("allocator", lambda: [check_allocator()]))
            else:
                print("SKIP pytorch: torch.cuda.is_available() is False")
        except ImportError:
            print("SKIP pytorch: PyTorch is not installed")
        for name, step in steps:
            try:
                for line in step():
                    print(f"PASS {name}: {line}")
            except Exception as e:  # noqa: BLE001 - reported, then the exit status says so
                failed += 1
                print(f"FAIL {name}: {type(e).__name__}: {e}")
    print("selftest:", "FAILED" if failed else "passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
