"""The Engine on the simulated device: registration, round trips, budgets, counters, close."""

import time

import numpy as np
import pytest

import vramswap
from conftest import random_arrays, write_safetensors

MIB = 1 << 20


def test_a_safetensors_file_registers_lazily_and_comes_back_byte_for_byte(engine, tmp_path, set_state):
    tensors = {
        "embed": np.arange(64, dtype=np.float32).reshape(8, 8),
        "norm": np.linspace(-1, 1, 10).astype(np.float16),
        "ids": np.arange(5, dtype=np.int64),
        "bf": np.array([0x3F80, 0xC000, 0x0000], dtype=np.uint16),
    }
    path = write_safetensors(tmp_path / "m.safetensors", tensors, {"bf": "BF16"})
    engine.register("m", path)
    assert set_state(engine, "m") == "on_disk"
    assert engine.status()["counters"]["loads"] == 0
    with engine.acquire("m") as h:
        by_name = {t["name"]: t for t in h.tensors}
        assert by_name["embed"]["shape"] == (8, 8) and by_name["embed"]["dtype"] == "F32"
        assert by_name["bf"]["dtype"] == "BF16"
        for name, a in tensors.items():
            got = h.to_numpy(name)
            assert got.dtype == a.dtype and got.shape == a.shape
            assert got.tobytes() == a.tobytes()
        assert h.device_ptr("embed") == h.base + by_name["embed"]["offset"]
    assert engine.status()["counters"]["loads"] == 1


def test_a_model_directory_registers_like_a_file(engine, tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    a = np.arange(100, dtype=np.int32)
    write_safetensors(d / "model.safetensors", {"w": a})
    engine.register("dir", d)
    with engine.acquire("dir") as h:
        assert np.array_equal(h.to_numpy("w"), a)


def test_a_file_written_by_the_safetensors_package_loads(engine, tmp_path):
    st = pytest.importorskip("safetensors.numpy", reason="the safetensors package is not installed")
    a = np.random.default_rng(1).standard_normal((16, 4)).astype(np.float32)
    st.save_file({"w": a}, str(tmp_path / "w.safetensors"))
    engine.register("st", tmp_path / "w.safetensors")
    with engine.acquire("st") as h:
        assert np.array_equal(h.to_numpy("w"), a)


@pytest.mark.parametrize(
    "dtype",
    [np.bool_, np.uint8, np.int8, np.int16, np.uint16, np.float16, np.int32, np.uint32,
     np.float32, np.int64, np.uint64, np.float64, np.complex64],
)
def test_arrays_of_every_numpy_dtype_round_trip(engine, dtype):
    a = (np.arange(24) % 7).astype(dtype).reshape(2, 3, 4)
    engine.register_arrays("x", {"a": a, "scalar": np.array(3, dtype=dtype)})
    with engine.acquire("x") as h:
        got = h.to_numpy("a")
        assert got.dtype == a.dtype and got.shape == a.shape and np.array_equal(got, a)
        assert h.to_numpy("scalar").shape == ()


def test_bf16_comes_as_uint16_with_an_explicit_dtype(engine):
    bits = np.array([0x3F80, 0x4000, 0xBF80], dtype=np.uint16)
    engine.register_arrays("b", {"w": bits}, dtypes={"w": "bf16"})
    with engine.acquire("b") as h:
        assert h.tensors[0]["dtype"] == "BF16"
        assert h.to_numpy("w").dtype == np.uint16
        assert np.array_equal(h.to_numpy("w"), bits)
    with pytest.raises(vramswap.InvalidArgumentError, match="bytes per element"):
        engine.register_arrays("c", {"w": np.zeros(3, np.float32)}, dtypes={"w": "BF16"})


def test_non_contiguous_arrays_are_copied_as_their_logical_content(engine):
    a = np.arange(32, dtype=np.float32).reshape(4, 8)[:, ::2]
    engine.register_arrays("t", {"w": a})
    with engine.acquire("t") as h:
        assert np.array_equal(h.to_numpy("w"), a)


def test_acquire_offload_release_acquire_keeps_the_bytes(engine, tmp_path, set_state):
    arrays = random_arrays(7)
    engine.register("f", write_safetensors(tmp_path / "f.safetensors", arrays))
    for step in range(3):
        with engine.acquire("f") as h:
            for name, a in arrays.items():
                assert h.to_numpy(name).tobytes() == a.tobytes(), (step, name)
        assert set_state(engine, "f") == "on_device"
        engine.offload("f")
        assert set_state(engine, "f") == "in_host"
        if step == 1:
            engine.release("f")
            assert set_state(engine, "f") == "on_disk"
    c = engine.status()["counters"]
    assert c["loads"] == 2 and c["h2d_swaps"] == 3 and c["d2h_swaps"] == 3 and c["releases"] == 1


def test_the_device_budget_evicts_the_least_recently_used_idle_set(set_state):
    with vramswap.Engine(backend="sim", device_budget="6MiB") as e:
        for n in "abc":
            e.register_arrays(n, {"w": np.full(MIB, ord(n), np.uint8)})  # 2 MiB on the device
        for n in "abc":
            e.acquire(n).release()
        e.acquire("a").release()  # a is now the most recent; b the least
        e.register_arrays("d", {"w": np.full(MIB, 1, np.uint8)})
        with e.acquire("d"):
            assert set_state(e, "b") == "in_host"
            assert {set_state(e, n) for n in "acd"} == {"on_device"}
        assert e.status()["counters"]["evictions"] == 1
        assert e.status()["device_used"] <= 6 * MIB


def test_a_set_larger_than_the_device_budget_is_an_out_of_memory_error():
    with vramswap.Engine(backend="sim", device_budget=2 * MIB) as e:
        e.register_arrays("big", {"w": np.zeros(3 * MIB, np.uint8)})
        with pytest.raises(vramswap.OutOfMemoryError) as ex:
            e.acquire("big")
        assert isinstance(ex.value, MemoryError) and "device budget" in str(ex.value)


def test_the_allocators_out_of_memory_numbers_are_attributes():
    with vramswap.Engine(backend="sim") as e:
        held = e.allocate(MIB)
        with pytest.raises(vramswap.OutOfMemoryError) as ex:
            e.allocate(1 << 50)
        err = ex.value
        assert err.requested is not None and err.requested >= 1 << 50
        assert err.allocated is not None and err.allocated >= MIB
        assert err.reserved is not None and err.reserved >= err.allocated
        assert err.device_free is not None and 0 < err.device_free < 1 << 50
        assert err.limit is None and err.fragmented is not None
        assert str(err.requested) in str(err)
        e.free(held)
    # A budget's refusal is no allocator's: the numbers stay None.
    with vramswap.Engine(backend="sim", device_budget=2 * MIB) as e:
        e.register_arrays("big", {"w": np.zeros(3 * MIB, np.uint8)})
        with pytest.raises(vramswap.OutOfMemoryError) as ex:
            e.acquire("big")
        assert ex.value.requested is None


def test_the_allocator_and_device_are_configured_by_arguments():
    with vramswap.Engine(backend="sim", alloc_conf="limit_mb:64", sim_capacity="256MiB") as e:
        with pytest.raises(vramswap.OutOfMemoryError) as ex:
            e.allocate(100 * MIB)
        assert ex.value.limit == 64 * MIB
        assert ex.value.device_free <= 256 * MIB
    with pytest.raises(vramswap.InvalidArgumentError, match="limit_mb"):
        vramswap.Engine(backend="sim", alloc_conf="limit_mb:lots")
    with pytest.raises(vramswap.InvalidArgumentError, match="no_such_key"):
        vramswap.Engine(backend="sim", swap_conf="no_such_key:1")


def test_held_sets_are_never_evicted_to_fit_another():
    with vramswap.Engine(backend="sim", device_budget="4MiB") as e:
        e.register_arrays("a", {"w": np.zeros(MIB, np.uint8)})
        e.register_arrays("b", {"w": np.zeros(MIB, np.uint8)})
        e.register_arrays("c", {"w": np.zeros(MIB, np.uint8)})
        with e.acquire("a"), e.acquire("b"):
            with pytest.raises(MemoryError):
                e.acquire("c")


def test_the_host_budget_refuses_arrays_beyond_it():
    with vramswap.Engine(backend="sim", host_budget="4MiB") as e:
        e.register_arrays("a", {"w": np.zeros(2 * MIB, np.uint8)})
        with pytest.raises(vramswap.OutOfMemoryError, match="host budget"):
            e.register_arrays("b", {"w": np.zeros(3 * MIB, np.uint8)})


def test_budgets_take_ints_and_strings_and_refuse_nonsense():
    with vramswap.Engine(backend="sim", device_budget=1 << 30, host_budget="1.5GB") as e:
        st = e.status()
        assert st["device_budget"] == 1 << 30 and st["host_budget"] == 1_500_000_000
    with pytest.raises(vramswap.InvalidArgumentError):
        vramswap.Engine(backend="sim", device_budget="12 parsecs")
    with pytest.raises(TypeError):
        vramswap.Engine(backend="sim", device_budget=True)
    with pytest.raises(ValueError):
        vramswap.Engine(backend="sim", idle_timeout=0)


def test_idle_sets_are_offloaded_after_the_idle_timeout(set_state):
    with vramswap.Engine(backend="sim", idle_timeout=0.05) as e:
        e.register_arrays("a", {"w": np.ones(1000, np.float32)})
        e.acquire("a").release()
        deadline = time.monotonic() + 30  # generous: only the eventual state is asserted
        while set_state(e, "a") != "in_host" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert set_state(e, "a") == "in_host"
        assert e.status()["counters"]["d2h_swaps"] >= 1


def test_a_held_set_outlives_the_idle_timeout(set_state):
    with vramswap.Engine(backend="sim", idle_timeout=0.01) as e:
        e.register_arrays("a", {"w": np.ones(10, np.float32)})
        with e.acquire("a") as h:
            time.sleep(0.2)  # many idle periods pass; the handle keeps the set on the device
            assert set_state(e, "a") == "on_device"
            assert np.array_equal(h.to_numpy("w"), np.ones(10, np.float32))


def test_status_reports_sets_and_counters(engine):
    engine.register_arrays("s", {"w": np.zeros(100, np.float32)})
    h = engine.acquire("s")
    st = engine.status()
    (s,) = st["sets"]
    assert s["name"] == "s" and s["guards"] == 1 and s["bytes"] == 400 and s["source"] == "memory"
    assert st["backend"] == "sim" and st["device_used"] == s["device_bytes"] > 0
    h.release()
    engine.offload("s")
    c = engine.status()["counters"]
    assert (c["h2d_swaps"], c["d2h_swaps"], c["bytes_h2d"]) == (1, 1, 400)
    assert engine.names() == ["s"]
    assert set(engine.stats()) >= {"allocated_bytes", "reserved_bytes", "cache_hits"}


def test_the_allocator_offloads_idle_sets_when_the_device_is_full(set_state, monkeypatch):
    # The engine's caching allocator and its sets share the device: running short, the
    # allocator asks the engine to offload idle sets.
    monkeypatch.setenv("VRAMSWAP_SIM_CONF", "capacity_mb:64")
    with vramswap.Engine(backend="sim") as e:
        total = e.status()["device_total"]
        e.register_arrays("idle", {"w": np.zeros(4 * MIB, np.uint8)})
        e.acquire("idle").release()
        p = e.allocate(total - 2 * MIB)
        assert set_state(e, "idle") == "in_host"
        assert e.stats()["allocated_bytes"]["current"] >= total - 2 * MIB
        e.free(p)
        e.empty_cache()


def test_prefetch_then_acquire_finds_the_set_on_the_device(engine, tmp_path, set_state):
    engine.register("p", write_safetensors(tmp_path / "p.safetensors", random_arrays(3)))
    engine.prefetch("p")
    with engine.acquire("p") as h:
        assert set_state(engine, "p") == "on_device" and h.bytes > 0
    assert engine.status()["counters"]["h2d_swaps"] == 1


def test_close_releases_everything_even_with_live_handles(tmp_path):
    e = vramswap.Engine(backend="sim", idle_timeout=60)
    e.register("f", write_safetensors(tmp_path / "f.safetensors", random_arrays(5)))
    e.register_arrays("a", {"w": np.ones(MIB, np.uint8)})
    h = e.acquire("f")
    e.acquire("a")  # dropped without release: the engine still holds its guard until close
    assert not e.leaks()["clean"]
    e.close()
    assert e.closed and h.released
    leaks = e.leaks()
    assert leaks["clean"], leaks
    assert leaks["device_bytes"] == 0 and leaks["pinned_bytes"] == 0
    with pytest.raises(vramswap.InvalidStateError, match="closed"):
        e.acquire("f")
    with pytest.raises(vramswap.InvalidStateError, match="released"):
        h.to_numpy("layer.0.weight")
    e.close()  # idempotent


def test_the_engine_is_a_context_manager():
    with vramswap.Engine(backend="sim") as e:
        e.register_arrays("a", {"w": np.ones(4, np.float32)})
        e.acquire("a")
    assert e.closed and e.leaks()["clean"]


def test_info_and_check_free_describe_the_device():
    i = vramswap.info(backend="sim")
    assert i["backend"] == "sim" and i["device"]["emulated"] is True
    total = i["memory"]["total"]
    assert vramswap.check_free(total // 2, backend="sim")
    assert vramswap.check_free("1MiB", backend="sim")
    assert not vramswap.check_free(total + 1, backend="sim")


def test_status_has_the_content_of_the_rust_status_json(engine, tmp_path):
    import json

    from vramswap import _vramswap

    engine.register("f", write_safetensors(tmp_path / "f.safetensors", random_arrays(2)))
    engine.register_arrays("a", {"w": np.ones(8, np.float32)})
    h = engine.acquire("a")
    py, rust = engine.status(), json.loads(_vramswap._status_json(engine))
    for st in (py, rust):
        for s in st["sets"]:
            s.pop("idle_secs")  # time passes between the two calls
    assert py == rust
    h.release()
