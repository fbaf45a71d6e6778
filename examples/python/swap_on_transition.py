"""Seed 000: swap on every transition between a text-to-image pipeline and an image-to-text
model, only the active one on the device, each batch passed at once.

    python examples/python/swap_on_transition.py --cycles 3 --batch 4

For each transition it prints the swap time (outgoing offloaded to pinned host memory, incoming
swapped in) beside the baseline the seed replaces, measured in the same run: unload the outgoing
model (drop it, ``gc.collect()``, ``empty_cache()``) and re-instantiate the incoming one from its
saved directory (``from_pretrained`` + ``.to(device)``).

With no GPU it runs on CPU PyTorch over the simulated device with host-visible memory; on a GPU
(``--backend cuda``) the same code runs on CUDA. By default the models are tiny, random-init and
seeded (no download): a diffusers ``DDPMPipeline`` (UNet + scheduler) as the image generator and a
transformers ``VisionEncoderDecoderModel`` (ViT encoder, GPT-2 decoder) as the captioner.
Pipelines built with ``enable_model_cpu_offload()`` must be built without it: ``adopt`` refuses
accelerate's offload hooks (vramswap does that offloading).
"""

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

import vramswap
import vramswap.torch as vt


def build_models(root: Path):
    """Saves the two tiny models and returns their loaders (what re-instantiation runs)."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    from transformers import (GPT2Config, GPT2LMHeadModel, ViTConfig, ViTModel,
                              VisionEncoderDecoderModel)

    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50)).save_pretrained(root / "t2i")
    enc = ViTModel(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4, intermediate_size=64))
    dec = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                     add_cross_attention=True, is_decoder=True))
    i2t = VisionEncoderDecoderModel(encoder=enc, decoder=dec)
    i2t.config.decoder_start_token_id = 1
    i2t.config.pad_token_id = 0
    i2t.generation_config.decoder_start_token_id = 1
    i2t.generation_config.pad_token_id = 0
    i2t.save_pretrained(root / "i2t")

    def load_t2i(device):
        pipe = DDPMPipeline.from_pretrained(root / "t2i").to(device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def load_i2t(device):
        return VisionEncoderDecoderModel.from_pretrained(root / "i2t").eval().to(device)

    return {"t2i": load_t2i, "i2t": load_i2t}


def run_batch(name, model, images, batch, device):
    """One batch, passed at once: images from the generator, captions (token ids) from the
    captioner over the last images."""
    with torch.no_grad():
        if name == "t2i":
            g = torch.Generator(device="cpu").manual_seed(0)
            out = model(batch_size=batch, num_inference_steps=2, generator=g, output_type="np").images
            return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
        return model.generate(images.to(device), max_new_tokens=4, do_sample=False)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", default=os.environ.get("VRAMSWAP_BACKEND", "auto"))
    p.add_argument("--cycles", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    a = p.parse_args(argv)
    if a.backend == "sim" or (a.backend == "auto" and not torch.cuda.is_available()):
        os.environ.setdefault("VRAMSWAP_SIM_CONF", "host_visible:true")
    with tempfile.TemporaryDirectory() as tmp, vramswap.Engine(backend=a.backend) as engine:
        device = torch.device("cuda" if engine.backend == "cuda" else "cpu")
        loaders = build_models(Path(tmp))
        models = {n: load(device) for n, load in loaders.items()}
        for n, m in models.items():
            vt.adopt(engine, n, m)
            engine.offload(n)  # nothing on the device until its turn
        print(f"backend={engine.backend} device={device} host_visible={engine.host_visible}")
        print(f"{'transition':<12} {'swap ms':>9} {'reinstantiate ms':>17} {'ratio':>7}  resident")
        images = torch.zeros(a.batch, 3, 16, 16)
        prev, outputs, baseline = None, {}, None
        for cycle in range(a.cycles):
            for name in ("t2i", "i2t"):
                # vramswap: outgoing to pinned host memory, incoming swapped in.
                sync(device)
                t0 = time.perf_counter()
                if prev is not None:
                    engine.offload(prev)
                engine.acquire(name).release()
                sync(device)
                swap_ms = (time.perf_counter() - t0) * 1e3
                # Baseline, same run: unload the outgoing model and re-instantiate the incoming.
                t0 = time.perf_counter()
                baseline = None  # the outgoing plain instance, dropped
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                baseline = loaders[name](device)
                sync(device)
                base_ms = (time.perf_counter() - t0) * 1e3
                resident = [s["name"] for s in engine.status()["sets"] if s["state"] == "on_device"]
                label = f"{prev or '-'}->{name}"
                print(f"{label:<12} {swap_ms:>9.2f} {base_ms:>17.2f} {base_ms / swap_ms:>6.1f}x  {resident}")
                assert resident == [name], f"only the active model may be on the device: {resident}"
                out = run_batch(name, models[name], images, a.batch, device)
                if name == "t2i":
                    images = out
                if cycle == 0:
                    outputs[name] = out
                elif not torch.equal(out, outputs[name]):
                    print(f"error: {name} output changed after swaps", file=sys.stderr)
                    return 1
                prev = name
        c = engine.status()["counters"]
        print(f"counters: h2d_swaps={c['h2d_swaps']} d2h_swaps={c['d2h_swaps']} "
              f"evictions={c['evictions']}; outputs identical across {a.cycles} cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
