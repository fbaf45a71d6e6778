"""The shared host store from Python: ``Engine(store=...)`` and ``VRAMSWAP_STORE``, several
processes over one copy, and a PyTorch worker that restarts from a meta-device model with its
weights from the store (issue 22). The store is the ``vramswap`` command-line tool's
``store serve``: ``VRAMSWAP_EXE`` names it (scripts/test.sh sets it), else the repository's
``target/debug/vramswap``; without one these tests fail, they do not skip."""

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import vramswap
from conftest import random_arrays, write_safetensors

REPO = Path(__file__).resolve().parents[2]


def vramswap_exe() -> str:
    for c in (os.environ.get("VRAMSWAP_EXE"), REPO / "target" / "debug" / "vramswap", shutil.which("vramswap")):
        if c and Path(c).is_file():
            return str(c)
    pytest.fail("no vramswap executable: set VRAMSWAP_EXE or build it (cargo build)")


@pytest.fixture
def store(tmp_path):
    sock = tmp_path / "store.sock"
    proc = subprocess.Popen(
        [vramswap_exe(), "store", "serve", "--socket", str(sock)],
        env={**os.environ, "RUST_LOG": "warn"},
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            vramswap.store_status(sock)
            break
        except vramswap.StoreError:
            assert time.monotonic() < deadline, "the store did not start"
            assert proc.poll() is None, "the store exited"
            time.sleep(0.01)
    yield sock
    proc.terminate()
    assert proc.wait(timeout=10) == 0, "the store exits with status 0 on SIGTERM"


def wait_for(store, pred, timeout=20.0):
    """The store's status once `pred` holds (it learns of a dead client asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        s = vramswap.store_status(store)
        if pred(s) or time.monotonic() > deadline:
            return s
        time.sleep(0.01)


def run_python(code: str, **env) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_engines_in_several_processes_share_one_load(store, tmp_path):
    arrays = random_arrays(1)
    path = write_safetensors(tmp_path / "m.safetensors", arrays)
    e = vramswap.Engine(backend="sim", store=store)
    e.register("m", path)
    with e.acquire("m") as h:
        got = h.to_numpy("layer.0.weight")
    assert np.array_equal(got, arrays["layer.0.weight"])
    c = e.status()["counters"]
    assert (c["loads"], c["store_attaches"]) == (0, 1)
    # Another process, opted in by the environment alone, attaches to the same copy.
    out = run_python(
        f"""
        import vramswap
        e = vramswap.Engine(backend="sim")
        e.register("m", {str(path)!r})
        with e.acquire("m") as h:
            print(h.to_numpy("layer.0.weight").tobytes().hex())
        print(e.status()["counters"]["store_attaches"])
        """,
        VRAMSWAP_STORE=str(store),
    )
    hexed, attaches = out.split()
    assert bytes.fromhex(hexed) == got.tobytes() and attaches == "1"
    s = wait_for(store, lambda s: s["sets"][0]["clients"] == 1)  # the other process is gone
    assert s["counters"]["loads"] == 1 and s["counters"]["attaches"] == 1
    assert s["host_used"] == s["sets"][0]["bytes"]
    e.close()


def test_arrays_go_into_the_store_and_other_contents_under_a_name_are_refused(store):
    a, b = random_arrays(2), random_arrays(3)
    e1 = vramswap.Engine(backend="sim", store=store)
    e2 = vramswap.Engine(backend="sim", store=store)
    e1.register_arrays("w", a)
    with pytest.raises(vramswap.AlreadyExistsError, match="nothing was replaced"):
        e2.register_arrays("w", b)
    e2.register_arrays("w", a)  # the same contents: the one copy
    s = vramswap.store_status(store)
    assert (s["counters"]["puts"], s["counters"]["attaches"]) == (1, 1)
    e1.close()
    e2.close()


def test_a_store_that_is_not_there_is_a_store_error(tmp_path):
    with pytest.raises(vramswap.StoreError, match="cannot connect") as info:
        vramswap.Engine(backend="sim", store=tmp_path / "nobody.sock")
    assert isinstance(info.value, ConnectionError)
    with pytest.raises(vramswap.StoreError):
        vramswap.store_status(tmp_path / "nobody.sock")


WORKER = """
import sys, torch, transformers, vramswap, vramswap.torch as vt
config = transformers.LlamaConfig(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
)
meta = sys.argv[1] == "meta"
if meta:
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
else:
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
model.eval()
engine = vramswap.Engine(backend="sim")
vt.adopt(engine, "llama", model)
assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
ids = torch.tensor([[1, 5, 9, 200, 3, 17]])
with torch.no_grad():
    logits = model(ids).logits
engine.offload("llama")
with torch.no_grad():
    again = model(ids).logits
assert torch.equal(logits, again)
c = engine.status()["counters"]
print(logits.numpy().tobytes().hex(), c["loads"], c["store_attaches"])
"""


def test_a_pytorch_worker_restarts_from_a_meta_model_with_the_weights_of_the_store(store):
    env = {"VRAMSWAP_STORE": str(store), "VRAMSWAP_SIM_CONF": "host_visible:true,capacity_mb:256", "HF_HUB_OFFLINE": "1"}
    first = run_python(WORKER.replace("sys.argv[1]", "'real'"), **env).split()
    restarted = run_python(WORKER.replace("sys.argv[1]", "'meta'"), **env).split()
    assert restarted[0] == first[0], "bit-identical logits from the store's copy"
    assert restarted[1:] == ["0", "1"], "no load from disk; one attach to the store"
    s = vramswap.store_status(store)
    assert s["counters"]["puts"] == 1 and s["counters"]["attaches"] == 1
    # A meta model that does not match the stored set is refused with the first difference.
    bad = WORKER.replace("sys.argv[1]", "'meta'").replace("hidden_size=64", "hidden_size=32")
    out = subprocess.run([sys.executable, "-c", bad], env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "does not match the model" in out.stderr, out.stderr


def test_one_engine_per_simulated_device_over_one_store(store, tmp_path, monkeypatch):
    """Seed 003's manager per device: one process, one engine per device, one host copy."""
    monkeypatch.setenv("VRAMSWAP_SIM_DEVICES", "2")
    arrays = random_arrays(4)
    path = write_safetensors(tmp_path / "m.safetensors", arrays)
    engines = [vramswap.Engine(backend="sim", device=d, store=store) for d in (0, 1)]
    for e in engines:
        e.register("m", path)
        with e.acquire("m") as h:
            assert np.array_equal(h.to_numpy("layer.1.weight"), arrays["layer.1.weight"])
    s = vramswap.store_status(store)
    assert s["counters"]["loads"] == 1 and s["sets"][0]["clients"] == 2
    assert s["host_used"] == s["sets"][0]["bytes"]
    with pytest.raises(vramswap.InvalidDeviceError, match="device 2 does not exist"):
        vramswap.Engine(backend="sim", device=2, store=store)
    for e in engines:
        e.close()


def test_a_meta_model_the_store_does_not_hold_is_refused_and_nothing_stays_registered(store, monkeypatch):
    import torch
    import vramswap.torch as vt

    monkeypatch.setenv("VRAMSWAP_SIM_CONF", "host_visible:true,capacity_mb:64")
    engine = vramswap.Engine(backend="sim", store=store)
    with torch.device("meta"):
        model = torch.nn.Linear(4, 4)
    with pytest.raises(vramswap.NotFoundError, match="holds no set `lin`"):
        vt.adopt(engine, "lin", model)
    assert engine.names() == []
    # Put by a materialised model, then adopted on the meta device in the same process.
    torch.manual_seed(0)
    real = torch.nn.Linear(4, 4)
    vt.adopt(engine, "lin", real)
    other = vramswap.Engine(backend="sim", store=store)
    vt.adopt(other, "lin", model)
    x = torch.ones(1, 4)
    assert torch.equal(model(x), real(x))
    engine.close()
    other.close()
