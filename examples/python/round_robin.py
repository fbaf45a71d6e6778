"""Several weight sets cycled through a device budget that holds fewer of them.

Each step acquires the current model (swapping it in if it was evicted), prefetches the next
one so its copy overlaps the current step's work, and prints the swap with its time and GB/s.
The engine's status counters are printed at the end.

    python examples/python/round_robin.py                     # the GPU if there is one
    python examples/python/round_robin.py --backend sim --models 4 --mb 64 --fit 2
"""

import argparse
import sys
import time

import numpy as np

import vramswap


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="auto")
    p.add_argument("--models", type=int, default=4, help="weight sets")
    p.add_argument("--mb", type=int, default=64, help="MiB per set")
    p.add_argument("--fit", type=int, default=2, help="sets the device budget holds")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)

    mib = 1 << 20
    # Room for `fit` sets and their rounding to the mapping granularity (2 MiB).
    budget = args.fit * (args.mb + 2) * mib
    with vramswap.Engine(backend=args.backend, device_budget=budget) as engine:
        print(f"backend {engine.backend}: {args.models} sets of {args.mb} MiB, "
              f"device budget {budget / mib:.0f} MiB (holds {args.fit})")
        rng = np.random.default_rng(0)
        names = [f"model-{i}" for i in range(args.models)]
        for n in names:
            layers = {f"layers.{j}.weight": rng.standard_normal(args.mb * mib // 16, dtype=np.float32)
                      for j in range(4)}
            engine.register_arrays(n, layers)

        for r in range(args.rounds):
            for i, name in enumerate(names):
                was = next(s["state"] for s in engine.status()["sets"] if s["name"] == name)
                t0 = time.perf_counter()
                with engine.acquire(name) as h:
                    wait = time.perf_counter() - t0
                    c = engine.status()["counters"]
                    engine.prefetch(names[(i + 1) % len(names)])
                    # The "work" of this stage: read one tensor back.
                    _ = h.to_numpy(h.tensors[0]["name"])[:4]
                if was == "on_device":
                    swap = "resident"
                else:
                    swap = (f"swap-in from {was}: {c['last_swap_in_ms']:.1f} ms, "
                            f"{c['last_swap_in_gbps']:.2f} GB/s")
                print(f"round {r} {name}: waited {wait * 1e3:.1f} ms, {swap}")

        st = engine.status()
        print("sets:", ", ".join(f"{s['name']}={s['state']}" for s in st["sets"]))
        c = st["counters"]
        print(f"counters: loads={c['loads']} h2d_swaps={c['h2d_swaps']} d2h_swaps={c['d2h_swaps']} "
              f"evictions={c['evictions']} bytes_h2d={c['bytes_h2d']} "
              f"mean_swap_in_gbps={c['mean_swap_in_gbps']:.2f}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
