#!/usr/bin/env python3
"""PyTorch baselines on the GPU vramswap is measured on, in the same call.

Measures, for a Llama-like set of f16 tensors of --size-mb MiB:
  - .to("cuda") from pageable memory (what pipelines do today),
  - .to("cuda", non_blocking=True) from pinned memory,
  - .to("cpu") back (an offload),
  - safetensors.torch.load_file(device="cuda") of the same tensors (page cache warm),
  - PyTorch's caching allocator hit latency (caching_allocator_alloc/delete, Python call
    overhead included),
  - cuMemAllocAsync/cuMemFreeAsync latency through ctypes (call overhead included).

Writes a JSON object (--json PATH) that scripts/gpu_report.py puts beside vramswap's figures.
Where torch or a GPU is missing it says so, writes {"skipped": reason} and exits 77 (the
automake convention for a skipped test, which gpu-run.sh reports as skipped, not passed).
"""
import argparse
import ctypes
import json
import os
import statistics
import sys
import tempfile
import time


def llama_like_shapes(nbytes, layers=8, vocab=32000):
    elems = nbytes / 2
    a, b = 12.0 * layers, 2.0 * vocab
    h = max(64.0, (-b + (b * b + 4 * a * elems) ** 0.5) / (2 * a))
    h = max(1, int(h) // 64) * 64
    inter = -(-(h * 8 // 3) // 64) * 64
    shapes = [("model.embed_tokens.weight", (vocab, h))]
    for l in range(layers):
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes.append((f"model.layers.{l}.self_attn.{p}.weight", (h, h)))
        shapes.append((f"model.layers.{l}.mlp.gate_proj.weight", (inter, h)))
        shapes.append((f"model.layers.{l}.mlp.up_proj.weight", (inter, h)))
        shapes.append((f"model.layers.{l}.mlp.down_proj.weight", (h, inter)))
        shapes.append((f"model.layers.{l}.input_layernorm.weight", (h,)))
        shapes.append((f"model.layers.{l}.post_attention_layernorm.weight", (h,)))
    shapes.append(("model.norm.weight", (h,)))
    shapes.append(("lm_head.weight", (vocab, h)))
    return shapes


def timed(fn, reps):
    out = []
    fn()  # warm-up
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


SKIPPED = 77


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args()

    def emit(obj):
        text = json.dumps(obj, indent=2)
        if args.json:
            with open(args.json, "w") as f:
                f.write(text)
        print(text)

    try:
        import torch
    except ImportError as e:
        emit({"skipped": f"PyTorch is not installed ({e})"})
        return SKIPPED
    if not torch.cuda.is_available():
        emit({"skipped": "torch.cuda.is_available() is False: no GPU here"})
        return SKIPPED

    dev = torch.device("cuda")
    res = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "size_mb": args.size_mb,
    }
    shapes = llama_like_shapes(args.size_mb << 20)
    cpu = [torch.randn(s, dtype=torch.float16) for _, s in shapes]
    nbytes = sum(t.numel() * t.element_size() for t in cpu)
    res["bytes"] = nbytes
    gbps = lambda secs: nbytes / secs / 1e9

    def to_gpu(ts, non_blocking):
        out = [t.to(dev, non_blocking=non_blocking) for t in ts]
        torch.cuda.synchronize()
        del out

    t = timed(lambda: to_gpu(cpu, False), args.reps)
    res["to_cuda_pageable"] = {"ms": t * 1e3, "gbps": gbps(t)}
    pinned = [t.pin_memory() for t in cpu]
    t = timed(lambda: to_gpu(pinned, True), args.reps)
    res["to_cuda_pinned_non_blocking"] = {"ms": t * 1e3, "gbps": gbps(t)}
    gpu = [t.to(dev) for t in cpu]
    torch.cuda.synchronize()

    def to_cpu():
        out = [t.to("cpu") for t in gpu]
        del out

    t = timed(to_cpu, args.reps)
    res["to_cpu_pageable"] = {"ms": t * 1e3, "gbps": gbps(t)}
    del gpu, pinned
    torch.cuda.empty_cache()

    try:
        from safetensors.torch import load_file, save_file

        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "model.safetensors")
            save_file({n: t for (n, _), t in zip(shapes, cpu)}, path)

            def load():
                m = load_file(path, device="cuda")
                torch.cuda.synchronize()
                del m

            t = timed(load, args.reps)
            res["safetensors_load_file_cuda"] = {"ms": t * 1e3, "gbps": gbps(t), "page_cache": "warm"}
    except ImportError as e:
        res["safetensors_load_file_cuda"] = {"skipped": f"safetensors is not installed ({e})"}
    del cpu

    n = 200_000
    size = 1 << 20
    p = torch.cuda.caching_allocator_alloc(size)
    torch.cuda.caching_allocator_delete(p)
    t = time.perf_counter()
    for _ in range(n):
        p = torch.cuda.caching_allocator_alloc(size)
        torch.cuda.caching_allocator_delete(p)
    res["torch_caching_allocator_pair_ns"] = (time.perf_counter() - t) / n * 1e9
    res["torch_caching_allocator_note"] = "alloc+delete pair through Python, call overhead included"

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        ptr = ctypes.c_uint64()
        stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        cuda.cuMemAllocAsync.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t, ctypes.c_void_p]
        cuda.cuMemFreeAsync.argtypes = [ctypes.c_uint64, ctypes.c_void_p]
        m = 100_000
        assert cuda.cuMemAllocAsync(ctypes.byref(ptr), size, stream) == 0
        assert cuda.cuMemFreeAsync(ptr, stream) == 0
        t = time.perf_counter()
        for _ in range(m):
            cuda.cuMemAllocAsync(ctypes.byref(ptr), size, stream)
            cuda.cuMemFreeAsync(ptr, stream)
        res["cuMemAllocAsync_pair_ns"] = (time.perf_counter() - t) / m * 1e9
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 - report whatever stopped it
        res["cuMemAllocAsync_pair_ns"] = None
        res["cuMemAllocAsync_error"] = str(e)
    emit(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
