"""vramswap.torch: the clear errors everywhere; the real checks where PyTorch and a GPU are."""

import copy
import ctypes
import subprocess
import sys

import numpy as np
import pytest

import vramswap
import vramswap.torch as vt

try:
    import torch

    HAVE_GPU = torch.cuda.is_available() and vramswap.info()["backend"] == "cuda"
    WHY = "no CUDA GPU here" if not HAVE_GPU else ""
except ImportError:
    torch = None
    HAVE_GPU = False
    WHY = ("PyTorch is not installed: it is gigabytes, so CI does not install it; "
           "run `python -m vramswap.selftest` on a GPU machine for these checks")

gpu = pytest.mark.skipif(not HAVE_GPU, reason=WHY)


def test_adopt_refuses_clearly_without_a_gpu(engine):
    if HAVE_GPU:
        pytest.skip("a GPU is here: the real adopt tests run instead")
    with pytest.raises(vramswap.UnsupportedError) as ex:
        vt.adopt(engine, "m", object())
    assert "PyTorch" in str(ex.value) or "CUDA" in str(ex.value) or "cuda" in str(ex.value)
    with pytest.raises(vramswap.UnsupportedError):
        vt.use_allocator()


def test_the_allocator_library_has_the_entry_points_or_the_error_names_them():
    try:
        path = vt.find_allocator_library()
    except vramswap.UnsupportedError as e:
        assert vt.MALLOC_SYMBOL in str(e) and "VRAMSWAP_LIB" in str(e)
        return
    lib = ctypes.CDLL(path)
    assert hasattr(lib, vt.MALLOC_SYMBOL) and hasattr(lib, vt.FREE_SYMBOL)


def test_selftest_runs_and_skips_the_gpu_checks_where_there_is_no_gpu():
    r = subprocess.run([sys.executable, "-m", "vramswap.selftest", "--mb", "8"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    if not HAVE_GPU and vramswap.info()["backend"] != "cuda":
        assert "SKIP" in r.stdout
    else:
        assert "selftest: passed" in r.stdout


@gpu
def test_an_adopted_module_computes_the_same_after_offload_and_lazy_swap_in():
    with vramswap.Engine(backend="cuda") as engine, torch.no_grad():
        model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.LayerNorm(64)).eval()
        x = torch.randn(4, 64)
        # The reference is the un-adopted model on the same GPU: CPU kernels round differently
        # (the first H200 run compared with a CPU reference and failed on the last bits).
        ref = copy.deepcopy(model).cuda()(x.cuda()).cpu()
        adopted = vt.adopt(engine, "m", {"model": model})
        assert all(p.is_cuda for p in model.parameters())
        assert torch.equal(model(x.cuda()).cpu(), ref)
        engine.offload("m")
        assert next(s for s in engine.status()["sets"] if s["name"] == "m")["state"] == "in_host"
        assert torch.equal(model(x.cuda()).cpu(), ref)  # the forward wrapper brought it back
        assert len(adopted.tensors) == 4


@gpu
def test_dlpack_exports_view_the_device_bytes():
    with vramswap.Engine(backend="cuda") as engine:
        a = np.arange(12, dtype=np.float32).reshape(3, 4)
        engine.register_arrays("a", {"w": a, "b": np.array([0x3F80], np.uint16)}, dtypes={"b": "BF16"})
        with engine.acquire("a") as h:
            t = torch.from_dlpack(h.tensor("w"))
            assert t.is_cuda and t.data_ptr() == h.device_ptr("w")
            assert np.array_equal(t.cpu().numpy(), a)
            assert torch.from_dlpack(h.tensor("b")).dtype == torch.bfloat16
