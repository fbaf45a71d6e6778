"""Every error kind raised as its exception class; several Python threads on one Engine."""

import threading

import numpy as np
import pytest

import vramswap
from vramswap import _vramswap
from conftest import write_safetensors

CLASSES = {
    "driver": (vramswap.DriverError, RuntimeError),
    "out_of_memory": (vramswap.OutOfMemoryError, MemoryError),
    "backend_unavailable": (vramswap.BackendUnavailableError, RuntimeError),
    "invalid_argument": (vramswap.InvalidArgumentError, ValueError),
    "invalid_device": (vramswap.InvalidDeviceError, ValueError),
    "malformed": (vramswap.MalformedFileError, ValueError),
    "io": (vramswap.IoError, OSError),
    "not_found": (vramswap.NotFoundError, KeyError),
    "already_exists": (vramswap.AlreadyExistsError, ValueError),
    "invalid_state": (vramswap.InvalidStateError, RuntimeError),
    "checksum_mismatch": (vramswap.ChecksumMismatchError, vramswap.Error),
    "unsupported": (vramswap.UnsupportedError, NotImplementedError),
    "store": (vramswap.StoreError, ConnectionError),
}


def test_every_error_kind_has_its_class():
    assert sorted(_vramswap._error_kinds()) == sorted(CLASSES)
    for kind, (cls, builtin) in CLASSES.items():
        with pytest.raises(cls) as ex:
            _vramswap._raise_example(kind)
        assert isinstance(ex.value, vramswap.Error) and isinstance(ex.value, builtin)
        assert ex.value.kind == kind
        assert str(ex.value) and not str(ex.value).startswith("'")  # no KeyError quoting


def test_real_failures_raise_their_classes(engine, tmp_path, monkeypatch):
    with pytest.raises(vramswap.NotFoundError, match="`nope` not found"):
        engine.acquire("nope")
    with pytest.raises(vramswap.IoError):
        engine.register("missing", tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    engine.register("bad", bad)  # lazy: nothing read yet
    with pytest.raises(vramswap.MalformedFileError) as ex:
        engine.acquire("bad")
    assert isinstance(ex.value, ValueError) and "bad.safetensors" in str(ex.value)
    engine.register_arrays("a", {"w": np.zeros(4, np.float32)})
    with pytest.raises(vramswap.AlreadyExistsError):
        engine.register_arrays("a", {"w": np.zeros(4, np.float32)})
    with engine.acquire("a") as h:
        with pytest.raises(vramswap.InvalidStateError, match="held by 1 guard"):
            engine.offload("a")
        with pytest.raises(vramswap.UnsupportedError, match="simulat"):
            h.tensor("w")
        with pytest.raises(vramswap.NotFoundError):
            h.to_numpy("no-such-tensor")
    with pytest.raises(vramswap.InvalidStateError, match="no source"):
        engine.release("a")
    with pytest.raises(vramswap.InvalidArgumentError):
        vramswap.Engine(backend="tpu")
    # Finite but past what a Duration holds: an error, not a PanicException.
    for t in (1e20, float("inf"), -1.0):
        with pytest.raises(vramswap.InvalidArgumentError, match="idle_timeout"):
            vramswap.Engine(backend="sim", idle_timeout=t)
    with pytest.raises(vramswap.InvalidArgumentError):
        engine.register_arrays("obj", {"w": np.array(["a", "b"])})


def test_an_injected_copy_fault_is_a_driver_error(monkeypatch):
    monkeypatch.setenv("VRAMSWAP_SIM_FAULTS", "copy:1")
    with vramswap.Engine(backend="sim") as e:
        e.register_arrays("a", {"w": np.ones(1000, np.float32)})
        with pytest.raises(vramswap.DriverError, match="CUDA_ERROR_LAUNCH_FAILED"):
            e.acquire("a")
        with e.acquire("a") as h:  # the fault was one-shot
            assert np.array_equal(h.to_numpy("w"), np.ones(1000, np.float32))


def test_the_cuda_backend_without_a_gpu_is_unavailable():
    try:
        e = vramswap.Engine(backend="cuda")
    except vramswap.BackendUnavailableError as ex:
        assert isinstance(ex, RuntimeError) and "cuda" in str(ex)
        return
    e.close()
    pytest.skip("a CUDA device answers here")


def test_several_threads_share_one_engine(tmp_path):
    sets = {f"m{i}": np.random.default_rng(i).standard_normal(50_000).astype(np.float32) for i in range(4)}
    errors = []
    with vramswap.Engine(backend="sim", device_budget="8MiB") as e:
        for i, (n, a) in enumerate(sets.items()):
            if i % 2:
                e.register_arrays(n, {"w": a})
            else:
                e.register(n, write_safetensors(tmp_path / f"{n}.safetensors", {"w": a}))

        def worker(k):
            try:
                for j in range(25):
                    n = f"m{(k + j) % 4}"
                    with e.acquire(n) as h:
                        got = h.to_numpy("w")
                        if got.tobytes() != sets[n].tobytes():
                            errors.append(f"thread {k}: {n} differs")
                    if j % 5 == 0:
                        try:
                            e.offload(n)
                        except vramswap.InvalidStateError:
                            pass  # another thread holds it: allowed
                    e.status()
            except Exception as ex:  # noqa: BLE001 - reported below
                errors.append(f"thread {k}: {type(ex).__name__}: {ex}")

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert all(s["guards"] == 0 for s in e.status()["sets"])
    assert e.leaks()["clean"]


def test_a_long_acquire_releases_the_gil(monkeypatch):
    # A slow simulated link (50 MB/s) makes the swap-in of 10 MB take a while; other Python
    # threads must run meanwhile. Holding the GIL would allow at most a few switches.
    monkeypatch.setenv("VRAMSWAP_SIM_CONF", "h2d_gbps:0.05")
    with vramswap.Engine(backend="sim") as e:
        e.register_arrays("big", {"w": np.zeros(10 << 20, np.uint8)})
        in_acquire = threading.Event()
        done = threading.Event()

        def swap_in():
            in_acquire.set()
            e.acquire("big").release()
            done.set()

        t = threading.Thread(target=swap_in)
        t.start()
        in_acquire.wait()
        spins = 0
        while not done.is_set():
            spins += 1
        t.join()
        assert spins > 1000, spins
