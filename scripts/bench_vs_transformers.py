"""CPU tokens/s of `vramswap generate` beside transformers' `generate`, same model, same run.

Builds one seeded random-init Llama with transformers (hidden 512, 4 layers, f32; no
download), saves it with `save_pretrained` and a byte-level tokenizer, then measures greedy
generation of 32 new tokens at batch 1, 4, 8 and 16 (the same 16 prompts, left-padded in
transformers): vramswap through `generate --bench` (best of 3), transformers through
`model.generate` (best of 3, eos disabled so every row makes 32 tokens). Prints a table with
the machine and the command. Not a test: figures vary with the machine and its load.

Usage: python scripts/bench_vs_transformers.py --vramswap target/release/vramswap
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "hf_reference"))

import torch  # noqa: E402
from hf_reference import make_tokenizer  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

BATCHES = [1, 4, 8, 16]
NEW = 32
PROMPTS = [f"prompt number {i}: {'abc ' * (i % 5)}" for i in range(16)]


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vramswap", required=True)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="bench-vs-hf-")
    cfg = LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=8, vocab_size=259,
                      max_position_embeddings=256, bos_token_id=256, eos_token_id=257,
                      pad_token_id=258)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    model.save_pretrained(d, safe_serialization=True)
    tok = make_tokenizer(True)
    tok.padding_side = "left"
    tok.save_pretrained(d)

    cmd = [a.vramswap, "--backend", "sim", "generate", "--model", d, "--bench", "--json",
           "--max-new-tokens", str(NEW)]
    for p in PROMPTS:
        cmd += ["--prompt", p]
    rows = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    ours = {r["batch"]: r["batched_tok_s"] for r in rows}
    if not all(r["identical"] for r in rows):
        sys.exit("vramswap's batched output differs from its one-prompt-at-a-time output")

    theirs = {}
    with torch.no_grad():
        for b in BATCHES:
            enc = tok(PROMPTS[:b], return_tensors="pt", padding=True)
            best = float("inf")
            for _ in range(a.reps):
                t = time.perf_counter()
                out = model.generate(**enc, max_new_tokens=NEW, min_new_tokens=NEW,
                                     do_sample=False, eos_token_id=None, pad_token_id=258)
                best = min(best, time.perf_counter() - t)
            assert out.shape[1] - enc.input_ids.shape[1] == NEW
            theirs[b] = b * NEW / best

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()}, load "
          f"average {load} at the end; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    print(f"command: python scripts/bench_vs_transformers.py --vramswap {a.vramswap}")
    print("model: Llama, hidden 512, 4 layers, 8 heads, f32; greedy, 32 new tokens; best of "
          f"{a.reps}; vramswap's linear kernel {rows[0]['linear_kernel']}, batched output equal "
          "to one prompt at a time at every batch")
    print(f"{'batch':>5} {'vramswap tok/s':>15} {'transformers tok/s':>19} {'ratio':>7} "
          f"{'vramswap vs its batch 1':>24}")
    for b in BATCHES:
        print(f"{b:>5} {ours[b]:>15.0f} {theirs[b]:>19.0f} {ours[b] / theirs[b]:>6.2f}x "
              f"{ours[b] / ours[1]:>23.2f}x")


if __name__ == "__main__":
    main()
