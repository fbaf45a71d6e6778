"""vramswap's inference against Hugging Face transformers, token for token.

For every model family and config variant vramswap implements, this builds a tiny seeded
random-init model with transformers (no download), saves it with `save_pretrained` next to a
byte-level BPE tokenizer built here, and compares `vramswap generate` with transformers:

- the prompt ids (the tokenizer decides BOS),
- greedy tokens for 3 prompts of different lengths, each alone and all batched in one call,
- first-step logits within TOL times the logit scale (f32), with HF's top-2 margin reported,
- the chat-template prompt (`--chat`) against `apply_chat_template`.

Usage: python hf_reference.py --vramswap PATH/TO/vramswap [--workdir DIR] [--only NAME,...]
Exit status 0 when every variant matches; the table says what was compared.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# strftime_now: transformers uses local time, vramswap UTC.
os.environ["TZ"] = "UTC"
time.tzset()

import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402
from transformers import (  # noqa: E402
    GemmaConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

TOL = 1e-4
NEW_TOKENS = 12
PROMPTS = ["a", "The quick brown fox", "Once upon a time, in a land far away, there lived"]
# A template using what real ones use: whitespace control, slicing, tests, string methods,
# filters, `tojson`, `strftime_now`, `raise_exception` and the special tokens.
CHAT_TEMPLATE = """{%- if messages[0]['role'] == 'system' %}
    {%- set sys = messages[0]['content'] %}
    {%- set msgs = messages[1:] %}
{%- else %}
    {%- set sys = 'You help. Today is ' + strftime_now('%d %b %Y') + '.' %}
    {%- set msgs = messages %}
{%- endif %}
{{- bos_token }}<|system|>{{ sys | trim }} {{ {'tools': tools, 'n': msgs | length} | tojson }}{{ eos_token }}
{%- for m in msgs %}
    {%- if m['role'] not in ['user', 'assistant'] %}
        {{- raise_exception('unknown role ' + m['role']) }}
    {%- endif %}
<|{{ m['role'] }}|>{{ m['content'].strip() | lower if loop.last else m['content'] }}{{ eos_token }}
{%- endfor %}
{%- if add_generation_prompt %}
<|assistant|>
{%- endif %}
"""

SIZES = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=259,
    max_position_embeddings=256,
    bos_token_id=256,
    eos_token_id=257,
    pad_token_id=258,
)


def variants():
    """(name, config class, overrides, tokenizer BOS, config edit after save). Tokenizer BOS:
    True, its post-processor adds one; False, it adds none; "flags", the post-processor adds
    none but tokenizer_config.json says `add_bos_token: true` (which transformers 5 drops
    when it loads a tokenizer.json)."""
    v5 = None
    return [
        ("llama", LlamaConfig, {}, True, v5),
        ("llama-theta5e5", LlamaConfig, {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}, True, v5),
        ("llama-v4-config", LlamaConfig, {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 20000.0}}, True, "v4"),
        ("llama-linear", LlamaConfig, {"rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}}, True, v5),
        ("llama-dynamic", LlamaConfig, {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}}, True, v5),
        ("llama-llama3", LlamaConfig, {"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64, "rope_theta": 500000.0}}, True, v5),
        ("llama-yarn", LlamaConfig, {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "rope_theta": 10000.0}}, True, v5),
        ("llama-bias", LlamaConfig, {"attention_bias": True, "mlp_bias": True}, True, v5),
        ("llama-tied-gelu-hd32", LlamaConfig, {"tie_word_embeddings": True, "hidden_act": "gelu", "head_dim": 32}, True, v5),
        ("llama-nobos", LlamaConfig, {}, False, v5),
        ("llama-add-bos-flag", LlamaConfig, {}, "flags", v5),
        ("mistral-window4", MistralConfig, {"sliding_window": 4}, True, v5),
        ("qwen2", Qwen2Config, {}, False, v5),
        ("qwen2-window", Qwen2Config, {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1}, False, v5),
        ("qwen3", Qwen3Config, {"head_dim": 16}, False, v5),
        ("gemma", GemmaConfig, {"head_dim": 16}, True, v5),
        ("phi3-partial", Phi3Config, {"partial_rotary_factor": 0.5}, True, v5),
    ]


def byte_chars():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def make_tokenizer(add_bos):
    add_bos = add_bos is True
    chars = byte_chars()
    vocab = {chars[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<s>", "</s>", "<pad>"])
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 256)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        chat_template=CHAT_TEMPLATE,
    )


def make_model(cls, overrides, seed):
    cfg = cls(**{**SIZES, **overrides})
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    # Weights scaled so that greedy decoding does not collapse into one repeated token:
    # unit-variance activations through every linear, spread-out logits. With a tied head
    # the logits favour the input token's own embedding, so the blocks write more into the
    # residual stream there.
    tied = model.config.tie_word_embeddings
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("embed_tokens.weight"):
                # Gemma multiplies its embeddings by sqrt(hidden_size).
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]) if cls is GemmaConfig else 1.0)
            elif p.dim() >= 2:
                gain = 3.0 if "lm_head" in name else 1.0
                if tied and ("o_proj" in name or "down_proj" in name):
                    gain = 6.0
                p.normal_(0.0, gain / math.sqrt(p.shape[1]))
            elif "norm" in name:
                base = 0.0 if cls is GemmaConfig else 1.0
                p.copy_(base + 0.1 * torch.randn_like(p))
            else:  # biases
                p.normal_(0.0, 0.1)
    return model.eval()


def to_v4_config(path):
    """Rewrites a transformers 5 config.json in transformers 4's form (top-level rope_theta,
    rope_scaling with `type`)."""
    with open(path) as f:
        c = json.load(f)
    rp = c.pop("rope_parameters")
    c["rope_theta"] = rp.pop("rope_theta")
    if rp.get("rope_type", "default") != "default":
        rp["type"] = rp.pop("rope_type")
        c["rope_scaling"] = rp
    with open(path, "w") as f:
        json.dump(c, f, indent=2)


def hf_generate(model, ids):
    out = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        pad_token_id=258,
    )
    new = out[0, len(ids):].tolist()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    for i, t in enumerate(new):
        if t in eos:
            return new[: i + 1]
    return new


def vramswap(binary, model_dir, prompts, chat=False):
    cmd = [binary, "--backend", "sim", "generate", "--model", model_dir, "--greedy",
           "--max-new-tokens", str(NEW_TOKENS), "--json", "--first-logits"]
    if chat:
        cmd.append("--chat")
    for p in prompts:
        cmd += ["--prompt", p]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return json.loads(r.stdout)


def check(name, cls, overrides, add_bos, edit, binary, root, seed):
    d = os.path.join(root, name)
    model = make_model(cls, overrides, seed)
    model.save_pretrained(d, safe_serialization=True)
    make_tokenizer(add_bos).save_pretrained(d)
    if add_bos == "flags":
        # Only tokenizer_config.json asks for BOS (save_pretrained never writes the flag).
        tc = os.path.join(d, "tokenizer_config.json")
        with open(tc) as f:
            t = json.load(f)
        t["add_bos_token"] = True
        with open(tc, "w") as f:
            json.dump(t, f, indent=2)
    if edit == "v4":
        to_v4_config(os.path.join(d, "config.json"))
    tok = AutoTokenizer.from_pretrained(d)
    problems = []
    batched = vramswap(binary, d, PROMPTS)
    worst_rel, min_margin, distinct = 0.0, math.inf, set()
    for i, p in enumerate(PROMPTS):
        ids = tok(p).input_ids
        alone = vramswap(binary, d, [p])[0]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        top2 = torch.topk(logits, 2).values
        min_margin = min(min_margin, float(top2[0] - top2[1]))
        ours = torch.tensor(alone["first_logits"])
        scale = float(logits.abs().max())
        rel = float((ours - logits).abs().max()) / max(scale, 1.0)
        worst_rel = max(worst_rel, rel)
        want = hf_generate(model, ids)
        distinct |= set(want)
        if alone["prompt_ids"] != ids:
            problems.append(f"prompt {i}: ids {alone['prompt_ids']} != HF {ids}")
        if alone["token_ids"] != want:
            problems.append(f"prompt {i} alone: {alone['token_ids']} != HF {want}")
        if batched[i]["token_ids"] != want:
            problems.append(f"prompt {i} batched: {batched[i]['token_ids']} != HF {want}")
        if rel > TOL:
            problems.append(f"prompt {i}: first logits differ by {rel:.2e} of scale {scale:.1f}")
    chat_ids = tok.apply_chat_template(
        [{"role": "user", "content": PROMPTS[1]}], add_generation_prompt=True, tokenize=True
    )
    if hasattr(chat_ids, "keys"):
        chat_ids = chat_ids["input_ids"]
    ours_chat = vramswap(binary, d, [PROMPTS[1]], chat=True)[0]
    if ours_chat["prompt_ids"] != list(chat_ids):
        problems.append(f"chat prompt ids {ours_chat['prompt_ids']} != HF {list(chat_ids)}")
    if ours_chat["token_ids"] != hf_generate(model, list(chat_ids)):
        problems.append("chat generation differs")
    if len(distinct) < 4:
        problems.append(f"degenerate model: greedy output uses only {len(distinct)} tokens")
    return problems, worst_rel, min_margin


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vramswap", required=True, help="path to the vramswap binary")
    ap.add_argument("--workdir", default=None, help="where the models go (default: a temp dir)")
    ap.add_argument("--only", default=None, help="comma-separated variant names")
    a = ap.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)
    root = a.workdir or tempfile.mkdtemp(prefix="hf-reference-")
    only = set(a.only.split(",")) if a.only else None
    failed = 0
    t0 = time.time()
    print(f"transformers reference, {NEW_TOKENS} greedy tokens, prompts of "
          f"{[len(p) for p in PROMPTS]} chars, logits tolerance {TOL} x scale; models in {root}")
    print(f"{'variant':<22} {'result':<7} {'max|dlogit|/scale':>18} {'min HF top-2 margin':>20}")
    for seed, (name, cls, ov, bos, edit) in enumerate(variants()):
        if only and name not in only:
            continue
        try:
            problems, rel, margin = check(name, cls, ov, bos, edit, a.vramswap, root, seed)
        except Exception as e:  # a refusal or crash is a failure of this variant
            problems, rel, margin = [f"{type(e).__name__}: {e}"], math.nan, math.nan
        ok = not problems
        failed += not ok
        print(f"{name:<22} {'match' if ok else 'DIFFERS':<7} {rel:>18.2e} {margin:>20.4f}")
        for p in problems:
            print(f"    {p}")
    print(f"{failed} variant(s) differ; {time.time() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
