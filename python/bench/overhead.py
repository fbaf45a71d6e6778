"""Python overhead of the engine's hot calls, beside the same calls made from Rust, in one run.

- ``acquire`` of a resident set and the handle's release (Python: ``engine.acquire(n).release()``;
  Rust: ``SwapEngine::acquire`` and the guard's drop);
- ``status()`` with 10 sets (Python: a dict; Rust: the ``EngineStatus`` struct, and the struct
  serialised to a JSON value, which is what the Python dict is built from).

Goals (issue 11): acquire of a resident set under 5 µs from Python; ``status()`` under 50 µs for 10
sets. Figures are the median of several repeats; build the extension with ``--release`` first
(``pip install ./python``).

    python python/bench/overhead.py [--backend sim] [--iters 20000] [--repeats 7]
"""

import argparse
import statistics
import sys
import time

import numpy as np

import vramswap
from vramswap import _vramswap


def per_call_ns(fn, iters):
    t = time.perf_counter_ns()
    for _ in range(iters):
        fn()
    return (time.perf_counter_ns() - t) / iters


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="sim")
    p.add_argument("--iters", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--sets", type=int, default=10)
    args = p.parse_args(argv)

    with vramswap.Engine(backend=args.backend) as engine:
        for i in range(args.sets):
            engine.register_arrays(
                f"set{i}", {f"layer.{j}.weight": np.full(4096, i, np.float32) for j in range(8)}
            )
            engine.acquire(f"set{i}").release()  # resident from here on
        name = "set0"

        def py_acquire():
            engine.acquire(name).release()

        py_acq, py_st, rs_acq, rs_st, rs_json = [], [], [], [], []
        for _ in range(args.repeats):
            py_acq.append(per_call_ns(py_acquire, args.iters))
            py_st.append(per_call_ns(engine.status, max(1, args.iters // 10)))
            r = _vramswap._bench_rust(engine, name, args.iters)
            rs_acq.append(r["acquire_ns"])
            rs_st.append(r["status_ns"])
            rs_json.append(r["status_json_ns"])
        med = statistics.median
        a_py, s_py = med(py_acq) / 1e3, med(py_st) / 1e3
        a_rs, s_rs, s_js = med(rs_acq) / 1e3, med(rs_st) / 1e3, med(rs_json) / 1e3
        print(f"backend {engine.backend}, {args.sets} sets, median of {args.repeats} x {args.iters} calls")
        print(f"{'call':<34}{'Python µs':>11}{'Rust µs':>10}{'overhead µs':>13}  goal")
        print(f"{'acquire + release (resident set)':<34}{a_py:>11.2f}{a_rs:>10.2f}{a_py - a_rs:>13.2f}"
              f"  < 5 µs: {'met' if a_py < 5 else 'NOT met'}")
        print(f"{'status() with %d sets' % args.sets:<34}{s_py:>11.2f}{s_rs:>10.2f}{s_py - s_rs:>13.2f}"
              f"  < 50 µs: {'met' if s_py < 50 else 'NOT met'}")
        print(f"{'  (Rust status serialised to JSON)':<34}{'':>11}{s_js:>10.2f}{s_py - s_js:>13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
