#!/usr/bin/env python3
"""vramswap.torch.adopt on a GPU with the machine's own torch and transformers (issue 16, the GPU
bundle's Python step).

For random-init Llama models of about --sizes-gb GB each (bf16), in one run and side by side:
  - swap-out (``engine.offload``) and swap-in (``engine.acquire``) time and GB/s of the adopted
    model, against ``model.to("cpu")`` and ``model.to("cuda")`` of the same model un-adopted,
    and against re-instantiation (``from_pretrained`` of a saved copy onto the GPU);
  - the logits of the adopted model before and after swaps, equal to the un-adopted model's.

Prints a table and writes JSON (--json). Where torch, transformers, CUDA or vramswap is missing
(the dry run over the emulated driver) it says so, writes {"skipped": reason} and exits 77, which
gpu-run.sh reports as skipped, never as passed.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time


def skip(reason, path):
    print(f"SKIP: {reason}")
    if path:
        with open(path, "w") as f:
            json.dump({"skipped": reason}, f)
    sys.exit(77)


def llama_config(gb, LlamaConfig):
    """A Llama config of about `gb` GB of bf16 parameters (hidden 2048 to 5120; hidden 256 and a
    1024-token vocabulary under 0.1 GB, for dry runs)."""
    target = gb * 1e9 / 2
    h = 256 if gb < 0.1 else 2048 if gb <= 2 else 4096 if gb <= 8 else 5120
    inter = -(-(h * 8 // 3) // 256) * 256
    vocab = 1024 if gb < 0.1 else 32000
    per_layer = 4 * h * h + 3 * h * inter
    layers = max(1, round((target - 2 * vocab * h) / per_layer))
    return LlamaConfig(vocab_size=vocab, hidden_size=h, intermediate_size=inter,
                       num_hidden_layers=layers, num_attention_heads=h // 128,
                       num_key_value_heads=h // 128, max_position_embeddings=256)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes-gb", default="1,4,16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cpu: the same steps on CPU PyTorch over the host-visible simulated device "
                        "(a dry run of this script that CI can do; no .to() baselines)")
    a = p.parse_args()
    cuda = a.device == "cuda"
    if not cuda:
        os.environ.setdefault("VRAMSWAP_SIM_CONF", "host_visible:true,capacity_gb:4")
    try:
        import torch
        import transformers
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as e:
        skip(f"PyTorch or transformers is not installed ({e})", a.json)
    if cuda and not torch.cuda.is_available():
        skip("torch.cuda.is_available() is False (no GPU, or the emulated driver)", a.json)
    try:
        import vramswap
        import vramswap.torch as vt
    except ImportError as e:
        skip(f"the vramswap wheel is not installed ({e})", a.json)
    backend = "cuda" if cuda else "sim"
    try:
        info = vramswap.info(backend=backend)
    except vramswap.Error as e:
        skip(f"vramswap's {backend} backend does not open: {e}", a.json)
    if cuda and (info.get("emulated") or info.get("device", {}).get("emulated")):
        skip("the cuda backend is the emulated driver: PyTorch cannot use its memory", a.json)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def timed(fn):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t

    rows, results = [], []
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]], device=a.device)
    for gb in [float(x) for x in a.sizes_gb.split(",")]:
        cfg = llama_config(gb, LlamaConfig)
        with torch.device(a.device):
            torch.manual_seed(0)
            model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
        nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        with torch.no_grad():
            ref = model(ids).logits.float().cpu()
        to_cpu, to_cuda = [], []
        if cuda:  # the baselines of a GPU: un-adopted moves of the same model
            to_cpu.append(timed(lambda: model.to("cpu")))
            for _ in range(a.repeats):
                to_cuda.append(timed(lambda: model.to("cuda")))
                to_cpu.append(timed(lambda: model.to("cpu")))
        # Re-instantiation as a user reloading the model does it: from_pretrained of a saved
        # copy straight onto the GPU (page cache warm: the copy was just written). (Building it
        # on `meta` and loading the state dict leaves non-persistent buffers such as the rotary
        # inv_freq on `meta`: the first H200 run stopped there.)
        with tempfile.TemporaryDirectory() as saved:
            model.save_pretrained(saved)
            reinst = timed(lambda: LlamaForCausalLM.from_pretrained(
                saved, dtype=torch.bfloat16, device_map=a.device))
        with vramswap.Engine(backend=backend) as engine, torch.no_grad():
            vt.adopt(engine, "m", model)  # model is on the CPU: its bytes go to the set
            same_before = torch.equal(model(ids).logits.float().cpu(), ref)
            out_t, in_t = [], []
            for _ in range(a.repeats):
                out_t.append(timed(lambda: engine.offload("m")))
                in_t.append(timed(lambda: engine.acquire("m").release()))
            engine.offload("m")
            same_after = torch.equal(model(ids).logits.float().cpu(), ref)  # woken by the wrapper
        # On the simulated device the engine's leak report after close must be clean.
        clean = engine.leaks()["clean"] if not cuda else True
        del model
        if cuda:
            torch.cuda.empty_cache()
        med = statistics.median
        r = {
            "size_gb": round(nbytes / 1e9, 2),
            "swap_in_s": med(in_t), "swap_out_s": med(out_t),
            "to_cuda_s": med(to_cuda) if to_cuda else None,
            "to_cpu_s": med(to_cpu) if to_cpu else None, "reinstantiate_s": reinst,
            "outputs_equal_before_swaps": same_before, "outputs_equal_after_swaps": same_after,
            "device": a.device,
        }
        if not clean:
            print(f"LEAK: the engine's leak report after {r['size_gb']} GB is not clean")
        results.append(r)
        gbs = lambda s: nbytes / s / 1e9 if s else float("nan")  # noqa: E731
        rows.append((r["size_gb"], gbs(r["swap_in_s"]), gbs(r["to_cuda_s"]), gbs(r["swap_out_s"]),
                     gbs(r["to_cpu_s"]), r["reinstantiate_s"], same_before and same_after and clean))
    where = torch.cuda.get_device_name(0) if cuda else f"CPU, the host-visible simulated device"
    print(f"machine: {where}, torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"command: python3 {' '.join(sys.argv)}")
    print(f"{'GB':>6} {'swap-in GB/s':>13} {'.to(cuda) GB/s':>15} {'swap-out GB/s':>14} "
          f"{'.to(cpu) GB/s':>14} {'reinst s':>9} {'equal':>6}")
    for r in rows:
        print(f"{r[0]:>6} {r[1]:>13.2f} {r[2]:>15.2f} {r[3]:>14.2f} {r[4]:>14.2f} {r[5]:>9.2f} {str(r[6]):>6}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"models": results}, f, indent=1)
    return 0 if all(r[6] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
