#!/usr/bin/env python3
"""PyTorch on vramswap's caching allocator, checked against PyTorch's native allocator.

    python examples/torch_pluggable.py [--lib target/release/libvramswap.so] [--steps 20]

Trains a small model (a convolution, layer norm and an MLP) for a few steps, forward and
backward, once under PyTorch's native CUDA allocator and once under vramswap's, each in its own
subprocess (a pluggable allocator can only be installed before the first CUDA allocation). The
losses and final weights must agree; the script also prints each run's mean training-step time
and peak reserved memory (PyTorch's own counter for the native allocator, vramswap's statistics,
read through `vramswap_torch_stats_json`, for vramswap).

vramswap is switched on with:

    alloc = torch.cuda.memory.CUDAPluggableAllocator(
        "libvramswap.so", "vramswap_torch_malloc", "vramswap_torch_free")
    torch.cuda.memory.change_current_allocator(alloc)

It needs PyTorch with CUDA and a GPU; without them it says what is missing and exits with
status 77 (skipped). Exit status 0: results match; 1: they differ or a run failed.
"""

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time

SKIP = 77
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_lib():
    for profile in ("release", "debug"):
        path = os.path.join(ROOT, "target", profile, "libvramswap.so")
        if os.path.isfile(path):
            return path
    return os.path.join(ROOT, "target", "release", "libvramswap.so")


def vramswap_stats(lib_path, device):
    """vramswap's allocator statistics for `device` (the library is already loaded by torch)."""
    lib = ctypes.CDLL(lib_path)
    fn = lib.vramswap_torch_stats_json
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]
    needed = ctypes.c_size_t(0)
    buf = ctypes.create_string_buffer(1 << 16)
    status = fn(device, buf, len(buf), ctypes.byref(needed))
    if status != 0:
        lib.vramswap_last_error_message.restype = ctypes.c_char_p
        raise RuntimeError(
            "vramswap_torch_stats_json failed: %s" % lib.vramswap_last_error_message().decode())
    return json.loads(buf.value.decode())


def worker(args):
    """One training run under one allocator; writes results to args.out."""
    import torch

    if args.allocator == "vramswap":
        alloc = torch.cuda.memory.CUDAPluggableAllocator(
            args.lib, "vramswap_torch_malloc", "vramswap_torch_free")
        torch.cuda.memory.change_current_allocator(alloc)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    dev = torch.device("cuda", 0)

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.LayerNorm(32 * 16 * 16),
        torch.nn.Linear(32 * 16 * 16, 512),
        torch.nn.GELU(),
        torch.nn.Linear(512, 10),
    ).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, 16, 16, generator=gen).to(dev)
    y = torch.randint(0, 10, (args.batch,), generator=gen).to(dev)

    losses, times = [], []
    for _ in range(args.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())

    if args.allocator == "vramswap":
        stats = vramswap_stats(args.lib, 0)
        peak_reserved = stats["reserved_bytes"]["peak"]
        allocations = stats["allocation"]["allocated"]
    else:
        peak_reserved = torch.cuda.max_memory_reserved(dev)
        allocations = torch.cuda.memory_stats(dev)["allocation.all.allocated"]
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, args.out + ".pt")
    with open(args.out, "w") as f:
        json.dump({
            "losses": losses,
            # The first step includes cuBLAS/cuDNN set-up: leave it out of the mean.
            "step_ms": 1000 * sum(times[1:]) / max(1, len(times) - 1),
            "peak_reserved": peak_reserved,
            "allocations": allocations,
            "device": torch.cuda.get_device_name(dev),
            "torch": torch.__version__,
        }, f)


def run(allocator, args, out):
    env = dict(os.environ)
    env["VRAMSWAP_BACKEND"] = "cuda"  # never hand PyTorch simulated addresses
    env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # deterministic cuBLAS
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", allocator, "--lib", args.lib,
           "--steps", str(args.steps), "--batch", str(args.batch), "--out", out]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print("the %s run failed (exit %d):\n%s%s" % (allocator, proc.returncode, proc.stdout,
                                                       proc.stderr), file=sys.stderr)
        return None
    with open(out) as f:
        return json.load(f)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lib", default=default_lib(), help="path to libvramswap.so")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--worker", choices=["native", "vramswap"], help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.allocator = args.worker
        worker(args)
        return 0

    try:
        import torch
    except ImportError:
        print("SKIP: PyTorch is not installed; this example needs PyTorch with CUDA and a GPU "
              "(pip install torch).", file=sys.stderr)
        return SKIP
    if not torch.cuda.is_available():
        print("SKIP: PyTorch %s sees no CUDA device (torch.cuda.is_available() is False); this "
              "example needs a GPU." % torch.__version__, file=sys.stderr)
        return SKIP
    if not hasattr(torch.cuda, "memory") or not hasattr(torch.cuda.memory,
                                                        "CUDAPluggableAllocator"):
        print("SKIP: PyTorch %s has no torch.cuda.memory.CUDAPluggableAllocator (2.0 or newer "
              "needed)." % torch.__version__, file=sys.stderr)
        return SKIP
    if not os.path.isfile(args.lib):
        print("error: %s not found: build it with `cargo build --release --lib` or pass --lib"
              % args.lib, file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for allocator in ("native", "vramswap"):
            results[allocator] = run(allocator, args, os.path.join(tmp, allocator + ".json"))
            if results[allocator] is None:
                return 1
        native = torch.load(os.path.join(tmp, "native.json.pt"))
        ours = torch.load(os.path.join(tmp, "vramswap.json.pt"))

    n, v = results["native"], results["vramswap"]
    ok = True
    if v["allocations"] == 0:
        print("FAIL: vramswap served no allocation: the allocator was not switched",
              file=sys.stderr)
        ok = False
    for i, (a, b) in enumerate(zip(n["losses"], v["losses"])):
        if abs(a - b) > 1e-5 * max(1.0, abs(a)):
            print("FAIL: step %d loss %.8f (native) vs %.8f (vramswap)" % (i, a, b),
                  file=sys.stderr)
            ok = False
            break
    for k in native:
        if not torch.allclose(native[k], ours[k], rtol=1e-5, atol=1e-6):
            diff = (native[k] - ours[k]).abs().max().item()
            print("FAIL: parameter %s differs by up to %g" % (k, diff), file=sys.stderr)
            ok = False

    print("device: %s, torch %s, %d steps, batch %d" % (n["device"], n["torch"], args.steps,
                                                         args.batch))
    print("| allocator | mean step (ms) | peak reserved (MiB) | allocations |")
    print("| --- | --- | --- | --- |")
    for name, r in (("native", n), ("vramswap", v)):
        print("| %s | %.3f | %.1f | %d |" % (name, r["step_ms"], r["peak_reserved"] / 2**20,
                                            r["allocations"]))
    print("final loss: native %.6f, vramswap %.6f" % (n["losses"][-1], v["losses"][-1]))
    print("results match" if ok else "results DIFFER")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
