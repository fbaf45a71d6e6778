#!/usr/bin/env python3
"""Turns the outputs of run.sh (a folder) into one Markdown report: docs/gpu-results.md."""
import datetime
import json
import os
import sys


def load(d, name):
    try:
        with open(os.path.join(d, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fig(x, key="gbps", unit="GB/s"):
    if not isinstance(x, dict) or key not in x:
        return "n/a"
    return f"{x[key]:.2f} {unit}"


def main():
    d = sys.argv[1]
    info = load(d, "info.json") or {}
    st = load(d, "selftest.json") or {}
    bw = load(d, "bench.json") or {}
    sb = load(d, "swap-bench.json") or {}
    th = load(d, "torch.json") or {}
    steps = open(os.path.join(d, "steps.txt")).read().split("\n") if os.path.exists(os.path.join(d, "steps.txt")) else []
    dev = info.get("device", {})
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    bundle = sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(d.rstrip("/"))
    commit_file = os.path.join(bundle, "COMMIT")
    commit = open(commit_file).read().strip() if os.path.exists(commit_file) else "?"
    p = print
    p("# GPU results\n")
    p(f"- date: {now}")
    p(f"- device: {dev.get('name', '?')} (compute {dev.get('compute_capability', '?')}, "
      f"{dev.get('total_memory', 0) / 2**30:.1f} GiB, emulated: {dev.get('emulated', '?')})")
    p(f"- driver version: {dev.get('driver_version', '?')}; PyTorch: {th.get('torch', 'n/a')} (CUDA {th.get('torch_cuda', 'n/a')})")
    p(f"- vramswap commit: {commit}\n")
    p("## Steps\n")
    p("| step | result |\n| --- | --- |")
    for s in steps:
        if s.strip():
            name, _, r = s.partition(" ")
            p(f"| {name} | {r} |")
    if st:
        failed = [c["name"] for c in st.get("checks", []) if not c.get("passed")]
        p(f"\nselftest: {'passed' if st.get('passed') else 'FAILED'}; failed checks: {failed or 'none'}")
    if bw:
        p("\n## Bandwidth (`vramswap bench --backend cuda`)\n")
        p("| copy | GB/s | ratio to ceiling |\n| --- | --- | --- |")
        for k, label in [("h2d", "h2d"), ("d2h", "d2h")]:
            for kind in ("pinned", "pageable"):
                f = bw.get(k, {}).get(kind, {})
                p(f"| {label} {kind} | {f.get('gbps', 0):.2f} | {f.get('ratio', 0):.2f} |")
        for k in ("bidir", "d2d"):
            f = bw.get(k, {})
            p(f"| {k} | {f.get('gbps', 0):.2f} | {f.get('ratio', 0):.2f} |")
        for k in ("h2d", "d2h"):
            b = bw.get(k, {}).get("best")
            if b:
                p(f"\nbest {k}: {b['chunk_bytes'] >> 20} MiB chunks x {b['streams']} streams, {b['gbps']:.2f} GB/s ({b['ratio']:.2f} of the ceiling)")
    vmm = bw.get("vmm") if bw else None
    if vmm:
        p(f"\n## Virtual-memory calls, {vmm['granule_bytes'] >> 20} MiB each (mean of {vmm['calls']}, host clock)\n")
        p("| call | µs | calls/s |\n| --- | --- | --- |")
        for k, label in [("reserve_us", "cuMemAddressReserve"), ("create_us", "cuMemCreate"),
                         ("map_us", "cuMemMap + cuMemSetAccess"), ("unmap_us", "cuMemUnmap"),
                         ("release_us", "cuMemRelease"), ("free_reservation_us", "cuMemAddressFree"),
                         ("alloc_us", "cuMemAlloc"), ("free_us", "cuMemFree")]:
            us = vmm.get(k, 0)
            p(f"| {label} | {us:.2f} | {1e6 / us if us else 0:.0f} |")
    rc = load(d, "replay-compare.json")
    if isinstance(rc, list) and rc:
        p("\n## Allocator modes on the serving trace (`vramswap replay --generate serving --seed 1 --compare`)\n")
        p("| mode | peak allocated MiB | peak reserved MiB | reserved/allocated | maps/1k ops | unmaps/1k ops | ops/s | driver time per 1k ops (µs, from the VMM prices) |")
        p("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in rc:
            if r.get("error"):
                p(f"| {r['mode']} | error: {r['error']} | | | | | | |")
                continue
            ops = max(r.get("ops", 1), 1)
            maps, unmaps = r.get("maps", 0) * 1000 / ops, r.get("unmaps", 0) * 1000 / ops
            cost = maps * vmm["map_us"] + unmaps * vmm["unmap_us"] if vmm else 0
            p(f"| {r['mode']} | {r['peak_allocated_bytes'] / 2**20:.1f} | {r['peak_reserved_bytes'] / 2**20:.1f} | "
              f"{r['fragmentation']:.3f} | {maps:.1f} | {unmaps:.1f} | {r.get('ops_per_sec', 0):.0f} | {cost:.0f} |")
    if sb:
        p("\n## Whole-model swaps (`vramswap swap-bench --backend cuda`) beside PyTorch\n")
        p(f"set: {sb.get('set_bytes', 0) / 2**30:.2f} GiB, stable addresses: {sb.get('stable_addresses')}\n")
        p("| operation | ms | GB/s | ratio |\n| --- | --- | --- | --- |")
        for k in ("ceiling_h2d", "swap_in", "clean_swap_out", "dirty_swap_out", "ceiling_d2h", "concurrent_out_in"):
            f = sb.get(k, {})
            p(f"| vramswap {k} | {f.get('ms', 0):.3f} | {f.get('gbps', 0):.2f} | {f.get('ratio', 0):.2f} |")
        for k in ("to_cuda_pageable", "to_cuda_pinned_non_blocking", "to_cpu_pageable", "safetensors_load_file_cuda"):
            f = th.get(k)
            if isinstance(f, dict) and "ms" in f:
                ratio = sb.get("swap_in", {}).get("gbps", 0) / f["gbps"] if f.get("gbps") else 0
                p(f"| torch {k} | {f['ms']:.3f} | {f['gbps']:.2f} | vramswap swap-in is {ratio:.1f}x |")
        p(f"\nprefetch hidden behind {sb.get('compute_ms', 0):.1f} ms of compute: {sb.get('prefetch_hidden', 0) * 100:.0f}%")
    if th and "skipped" not in th:
        p("\n## Allocators\n")
        p(f"- PyTorch caching allocator alloc+delete pair: {th.get('torch_caching_allocator_pair_ns', 0):.0f} ns (Python call overhead included)")
        v = th.get("cuMemAllocAsync_pair_ns")
        p(f"- cuMemAllocAsync+cuMemFreeAsync pair: {f'{v:.0f} ns' if v else th.get('cuMemAllocAsync_error', 'n/a')} (ctypes call overhead included)")
    elif th:
        p(f"\nPyTorch baseline skipped: {th['skipped']}")
    ad = load(d, "torch-adopt.json") or {}
    if ad.get("models"):
        p("\n## `vramswap.torch.adopt` on this machine's torch (scripts/gpu_torch_adopt.py)\n")
        p("| GB | swap-in GB/s | .to(cuda) GB/s | swap-out GB/s | .to(cpu) GB/s | reinstantiate s | outputs equal |")
        p("| --- | --- | --- | --- | --- | --- | --- |")
        for m in ad["models"]:
            g = lambda k: m["size_gb"] * 1e9 / m[k] / 1e9 if m.get(k) else 0  # noqa: E731
            p(f"| {m['size_gb']} | {g('swap_in_s'):.2f} | {g('to_cuda_s'):.2f} | {g('swap_out_s'):.2f} | "
              f"{g('to_cpu_s'):.2f} | {m['reinstantiate_s']:.2f} | "
              f"{m['outputs_equal_before_swaps'] and m['outputs_equal_after_swaps']} |")
    elif ad:
        p(f"\nvramswap.torch.adopt step skipped: {ad.get('skipped')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
