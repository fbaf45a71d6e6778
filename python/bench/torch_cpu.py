"""vramswap.torch on CPU PyTorch over the host-visible simulated device: two measurements, each
beside its peer in the same run (issue 16).

1. The adopt wrappers' cost per forward: an adopted model (resident, so each forward's outermost
   wrapped call acquires a resident set and releases it) against the same architecture un-adopted.
   Goal: at most 10 µs added per forward call.
2. Swap-in on the host-visible device (``acquire`` of an offloaded set: the pinned host copy
   copied into fresh device memory and mapped) against a plain ``memcpy`` of the same bytes
   (NumPy ``copyto`` between two host buffers). Goal: at least 0.9 of memcpy's throughput.

Figures are medians of ``--repeats``; build the extension with ``--release`` for real numbers
(``pip install ./python``). It prints a table with the machine and the command beside it.

    python python/bench/torch_cpu.py [--mb 256] [--iters 2000] [--repeats 7]
"""

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("VRAMSWAP_SIM_CONF", "host_visible:true,capacity_gb:8")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import vramswap  # noqa: E402
import vramswap.torch as vt  # noqa: E402


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(4)]).eval()


def per_call_us(fn, iters):
    t = time.perf_counter_ns()
    for _ in range(iters):
        fn()
    return (time.perf_counter_ns() - t) / iters / 1e3


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, Python {platform.python_version()}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mb", type=int, default=256, help="size of the swapped set")
    p.add_argument("--iters", type=int, default=2000, help="forwards per repeat")
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with vramswap.Engine(backend="sim") as engine, torch.no_grad():
        assert engine.host_visible, "VRAMSWAP_SIM_CONF must have host_visible:true"
        bare, adopted = model(), model()
        vt.adopt(engine, "m", adopted)
        x = torch.randn(1, 64)
        assert torch.equal(bare(x), adopted(x))
        pin = engine.acquire("m")  # keep it resident: the wrappers' cost, not a swap
        b, h = [], []
        for _ in range(a.repeats):
            b.append(per_call_us(lambda: bare(x), a.iters))
            h.append(per_call_us(lambda: adopted(x), a.iters))
        pin.release()
        bare_us, hooked_us = statistics.median(b), statistics.median(h)
        rows.append(("forward, bare (4x Linear 64)", f"{bare_us:.2f} µs", ""))
        rows.append(("forward, adopted (wrappers)", f"{hooked_us:.2f} µs",
                     f"+{hooked_us - bare_us:.2f} µs per forward (goal <= 10)"))

        n = a.mb << 20
        src = np.random.default_rng(0).integers(0, 255, n, dtype=np.uint8)
        engine.register_arrays("big", {"w": src})
        dst = np.empty_like(src)
        np.copyto(dst, src)  # touch the destination once, as the device memory is per swap-in
        s, m = [], []
        for _ in range(a.repeats):
            engine.offload("big")
            t = time.perf_counter()
            engine.acquire("big").release()
            s.append(time.perf_counter() - t)
            t = time.perf_counter()
            np.copyto(dst, src)
            m.append(time.perf_counter() - t)
        swap_s, copy_s = statistics.median(s), statistics.median(m)
        gbs = lambda sec: n / sec / 1e9  # noqa: E731
        rows.append((f"swap-in {a.mb} MiB (host-visible sim)", f"{gbs(swap_s):.2f} GB/s", ""))
        rows.append((f"memcpy {a.mb} MiB (numpy copyto)", f"{gbs(copy_s):.2f} GB/s",
                     f"ratio swap/memcpy {copy_s / swap_s:.2f} (goal >= 0.9)"))
    print(f"machine: {machine()}")
    print(f"command: python {' '.join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))}")
    print(f"{'measure':<40} {'median':>12}  vs peer")
    for r in rows:
        print(f"{r[0]:<40} {r[1]:>12}  {r[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
