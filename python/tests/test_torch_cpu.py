"""vramswap.torch on CPU PyTorch over the host-visible simulated device: real transformers,
diffusers and sentence-transformers models, adopted, offloaded, woken and evicted, with outputs
bit-identical to the un-adopted model. These run in CI (scripts/test.sh installs PyTorch): a
missing PyTorch is a failure here, not a skip."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import vramswap
import vramswap.torch as vt

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HV = "host_visible:true,capacity_mb:512"


@pytest.fixture
def hv(monkeypatch):
    """A factory of engines on the host-visible sim; each checked for leaks at close."""
    monkeypatch.setenv("VRAMSWAP_SIM_CONF", HV)
    made = []

    def make(**kw):
        e = vramswap.Engine(backend="sim", **kw)
        assert e.host_visible
        made.append(e)
        return e

    yield make
    for e in made:
        e.close()
        assert e.leaks()["clean"], e.leaks()


def state(engine, name):
    return next(s for s in engine.status()["sets"] if s["name"] == name)["state"]


def same(a, b):
    """Bit-identical tensors (or nested outputs of them)."""
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if hasattr(a, "to_tuple"):
        return same(a.to_tuple(), b.to_tuple())
    return a == b


# ----- models, seeded and random-init from tiny configs (no download) ---------------------------


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(2)
    cfg = GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    m = GPT2LMHeadModel(cfg).eval()
    assert m.lm_head.weight is m.transformer.wte.weight  # tied
    return m


WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(91)]


def tiny_sentence_transformer():
    """A SentenceTransformer of a random-init tiny BERT and mean pooling, saved to and loaded from
    a temporary directory with a hand-written vocabulary (no hub download)."""
    import tempfile

    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizer

    torch.manual_seed(3)
    d = tempfile.mkdtemp(prefix="vramswap-st-")
    with open(os.path.join(d, "vocab.txt"), "w") as f:
        f.write("\n".join(WORDS) + "\n")
    BertTokenizer(os.path.join(d, "vocab.txt")).save_pretrained(d)
    cfg = BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(d)
    word = models.Transformer(d, max_seq_length=32)
    pool = models.Pooling(cfg.hidden_size, pooling_mode="mean")
    return SentenceTransformer(modules=[word, pool], device="cpu").eval()


SENTENCES = ["w1 w2 w3", "w40 w41", "w7 w8 w9 w10 w11"]


IDS = torch.tensor([[5, 17, 33, 2, 71, 9]])


def run(model):
    with torch.no_grad():
        if hasattr(model, "lm_head"):
            return model(IDS).logits
        return model.encode(SENTENCES, convert_to_tensor=True)


def set_device_bytes(nbytes_by_tensor):
    """The device bytes a set of tensors of these sizes takes (granularity and alignment
    included), measured on a probe engine of the same configuration."""
    e = vramswap.Engine(backend="sim")
    try:
        e.register_arrays("probe", {k: np.zeros(n, np.uint8) for k, n in nbytes_by_tensor.items()})
        with e.acquire("probe"):
            return next(s for s in e.status()["sets"] if s["name"] == "probe")["device_bytes"]
    finally:
        e.close()


def tensor_sizes(model):
    uniq = {id(t): (k, t) for k, t in list(model.named_parameters()) + list(model.named_buffers())}
    return {k: t.numel() * t.element_size() for k, t in uniq.values()}


# ----- DLPack and register_arrays on the host-visible device ------------------------------------


def test_dlpack_exports_cpu_views_of_the_set_memory_and_bf16_works(hv):
    e = hv()
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    b = torch.tensor([1.5, -2.0, 3.25], dtype=torch.bfloat16)
    e.register_arrays("a", {"w": w, "b": b, "h": np.ones(4, np.uint16)}, dtypes={"h": torch.float16})
    with e.acquire("a") as h:
        t = torch.from_dlpack(h.tensor("w"))
        assert t.device.type == "cpu" and t.data_ptr() == h.device_ptr("w")
        assert torch.equal(t, w)
        tb = torch.from_dlpack(h.tensor("b"))
        assert tb.dtype == torch.bfloat16 and torch.equal(tb, b)
        assert torch.from_dlpack(h.tensor("h")).dtype == torch.float16
        assert h.tensor("w").__dlpack_device__() == (1, 0)
        # Zero-copy both ways: a write through the view is what the device holds.
        t[0, 0] = 42.0
        assert h.to_numpy("w")[0, 0] == 42.0
        del t, tb


def test_dtype_names_in_torch_spelling_and_mismatches_are_clear(hv):
    e = hv()
    e.register_arrays("n", {"x": np.zeros(2, np.uint16)}, dtypes={"x": "bfloat16"})
    with pytest.raises(vramswap.InvalidArgumentError) as ex:
        e.register_arrays("m", {"x": np.zeros(2, np.float32)}, dtypes={"x": "bfloat16"})
    assert "2 bytes per element" in str(ex.value) and "4" in str(ex.value)
    assert "m" not in e.names()


def test_plain_sim_refuses_views_naming_host_visible(engine):
    engine.register_arrays("a", {"w": np.zeros(4, np.float32)})
    with engine.acquire("a") as h, pytest.raises(vramswap.UnsupportedError) as ex:
        h.tensor("w")
    assert "host_visible:true" in str(ex.value)


# ----- adopt: plain modules, transformers, sentence-transformers, diffusers ----------------------


def test_a_module_with_buffers_is_bit_identical_through_offload_and_wake(hv):
    e = hv()
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU()).eval()
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        ref = m(x)
        a = vt.adopt(e, "bn", m)
        assert len(a.tensors) == 7  # conv w+b, bn w+b, running mean/var, num_batches_tracked
        assert m[1].running_mean.data_ptr() == e.acquire("bn").device_ptr("1.running_mean")
        assert same(m(x), ref)
        e.offload("bn")
        assert state(e, "bn") == "in_host"
        assert same(m(x), ref)  # the forward wrapper woke it
    assert e.status()["device_used"] > 0


def test_bf16_and_f16_models_adopt_with_their_dtype(hv):
    e = hv()
    for i, dt in enumerate([torch.bfloat16, torch.float16]):
        torch.manual_seed(i)
        m = torch.nn.Linear(16, 8).to(dt).eval()
        x = torch.randn(3, 16).to(dt)
        with torch.no_grad():
            ref = m(x)
            vt.adopt(e, f"lin{i}", m)
            assert m.weight.dtype == dt
            e.offload(f"lin{i}")
            assert same(m(x), ref)


def test_three_models_under_a_budget_for_two_evict_lru_bit_identically(hv):
    models = {"llama": tiny_llama(), "gpt2": tiny_gpt2(), "st": tiny_sentence_transformer()}
    refs = {k: run(m) for k, m in models.items()}
    dev = {k: set_device_bytes(tensor_sizes(m)) for k, m in models.items()}
    # Room for the two largest sets, not for all three.
    budget = sum(sorted(dev.values())[-2:])
    assert budget < sum(dev.values())
    e = hv(device_budget=budget)
    adopted = {k: vt.adopt(e, k, m) for k, m in models.items()}
    # The tied GPT-2 embedding is stored once.
    assert "lm_head.weight" not in adopted["gpt2"].tensors
    g = models["gpt2"]
    assert g.lm_head.weight.data_ptr() == g.transformer.wte.weight.data_ptr()
    for name in models:
        e.offload(name)
    evictions_before = e.status()["counters"]["evictions"]
    order = ["llama", "gpt2", "st", "llama", "st", "gpt2", "llama"]
    for name in order:
        out = run(models[name])
        assert same(out, refs[name]), f"{name} differs after swaps"
        st = e.status()
        assert st["device_used"] <= budget, st
        resident = [s["name"] for s in st["sets"] if s["state"] == "on_device"]
        assert name in resident and len(resident) <= 2, resident
    assert e.status()["counters"]["evictions"] > evictions_before


def test_generate_and_encode_run_through_the_hooks(hv):
    e = hv()
    llama = tiny_llama()
    st_model = tiny_sentence_transformer()
    with torch.no_grad():
        ref_gen = llama.generate(IDS, max_new_tokens=5, do_sample=False, pad_token_id=0)
        ref_emb = run(st_model)
    vt.adopt(e, "llama", llama)
    vt.adopt(e, "st", st_model)
    e.offload("llama")
    e.offload("st")
    with torch.no_grad():
        assert same(llama.generate(IDS, max_new_tokens=5, do_sample=False, pad_token_id=0), ref_gen)
        assert same(run(st_model), ref_emb)


def test_diffusers_components_adopted_as_one_set(hv):
    from diffusers import AutoencoderKL, UNet2DModel

    torch.manual_seed(4)
    unet = UNet2DModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                       block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,),
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                        norm_num_groups=4).eval()
    pipe = {"unet": unet, "vae": vae}
    lat = torch.randn(1, 4, 8, 8)

    def go():
        with torch.no_grad():
            x = unet(lat, 10).sample
            return vae.decode(x).sample

    ref = go()
    a = vt.adopt(e := hv(), "pipe", pipe)
    assert any(k.startswith("unet.") for k in a.tensors) and any(k.startswith("vae.") for k in a.tensors)
    assert same(go(), ref)
    e.offload("pipe")
    assert same(go(), ref)  # vae.decode is not forward: the submodules' wrappers hold the set


def test_accelerate_offload_hooks_are_refused_clearly(hv):
    from accelerate.hooks import ModelHook, add_hook_to_module

    m = torch.nn.Sequential(torch.nn.Linear(4, 4))
    add_hook_to_module(m[0], ModelHook())
    e = hv()
    with pytest.raises(vramswap.UnsupportedError) as ex:
        vt.adopt(e, "m", m)
    assert "accelerate" in str(ex.value) and "`0`" in str(ex.value)
    assert "m" not in e.names()


def test_reading_an_offloaded_models_weights_outside_any_hook_faults():
    code = textwrap.dedent(f"""
        import os, torch, vramswap, vramswap.torch as vt
        os.environ["VRAMSWAP_SIM_CONF"] = "{HV}"
        e = vramswap.Engine(backend="sim")
        m = torch.nn.Linear(1024, 1024)
        vt.adopt(e, "m", m)
        print("sum", float(m.weight.sum()), flush=True)  # resident: readable
        e.offload("m")
        print("offloaded", flush=True)
        print(float(m.weight.sum()))  # outside any hook: must fault
        print("read after offload", flush=True)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "offloaded" in r.stdout, r.stdout + r.stderr
    assert "read after offload" not in r.stdout
    assert r.returncode == -11, (r.returncode, r.stdout, r.stderr)


def test_8bit_float_buffers_keep_their_bits_through_offload(hv):
    e = hv()
    m = torch.nn.Module()
    src = torch.linspace(-4, 4, 64)
    m.register_buffer("a", src.to(torch.float8_e4m3fn))
    m.register_buffer("b", src.to(torch.float8_e5m2))
    bits = {k: v.view(torch.uint8).clone() for k, v in m.named_buffers()}
    vt.adopt(e, "f8", m)
    assert m.a.dtype == torch.float8_e4m3fn and m.b.dtype == torch.float8_e5m2
    e.offload("f8")
    with e.acquire("f8") as h:
        assert m.a.data_ptr() == h.device_ptr("a")
        for k, v in m.named_buffers():
            assert torch.equal(v.view(torch.uint8), bits[k]), k


# ----- the forward wrappers --------------------------------------------------------------------


def guards(engine, name):
    return next(s for s in engine.status()["sets"] if s["name"] == name)["guards"]


class Boom(torch.nn.Module):
    """A layer with weights that raises on demand."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)
        self.fail = False

    def forward(self, x):
        if self.fail:
            raise RuntimeError("boom")
        return self.lin(x)


def test_a_forward_that_raises_lets_the_set_go(hv):
    e = hv()
    m = torch.nn.Sequential(torch.nn.Linear(8, 8), Boom()).eval()
    vt.adopt(e, "m", m)
    x = torch.randn(2, 8)
    with torch.no_grad():
        m(x)
        assert guards(e, "m") == 0
        m[1].fail = True
        with pytest.raises(RuntimeError, match="boom"):
            m(x)  # raised two wrapped calls deep
        assert guards(e, "m") == 0, "the set stayed held after the exception"
        e.offload("m")
        assert state(e, "m") == "in_host"
        m[1].fail = False
        assert m(x).shape == (2, 8)  # and the next call wakes it as usual


def test_wrapped_forwards_keep_their_signature_and_direct_calls_wake_the_set(hv):
    import inspect

    e = hv()
    model = tiny_llama()
    before = inspect.signature(model.forward)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        ref = model(ids).logits
        vt.adopt(e, "llama", model)
        assert inspect.signature(model.forward) == before  # transformers reads it
        e.offload("llama")
        # forward called directly (no __call__): the wrapper still wakes the set
        assert same(model.forward(ids).logits, ref)


def test_a_deep_copy_of_an_adopted_model_computes_with_its_own_weights(hv):
    import copy

    e = hv()
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)).eval()
    x = torch.randn(2, 8)
    with torch.no_grad():
        vt.adopt(e, "m", m)
        ref = m(x)
        c = copy.deepcopy(m)
        with torch.no_grad():
            c[1].weight.zero_()
            c[1].bias.zero_()
        assert torch.equal(c(x), torch.zeros(2, 8))  # the copy's weights, not the original's
        assert same(m(x), ref)
        assert guards(e, "m") == 0


def test_remove_hooks_restores_the_modules_own_forward(hv):
    e = hv()
    m = torch.nn.Sequential(torch.nn.Linear(8, 8)).eval()
    a = vt.adopt(e, "m", m)
    assert "forward" in m.__dict__ and "forward" in m[0].__dict__
    a.remove_hooks()
    assert "forward" not in m.__dict__ and "forward" not in m[0].__dict__
    assert "_vramswap_forward" not in m[0].__dict__
    with e.acquire("m"), torch.no_grad():
        assert m(torch.randn(1, 8)).shape == (1, 8)
