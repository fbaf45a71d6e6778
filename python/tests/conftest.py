"""Fixtures of the vramswap test suite: every test runs on the simulated device (`sim`)."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest

import vramswap

# numpy dtype -> safetensors dtype name, for the writer below.
ST_DTYPES = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "U8",
    np.dtype(np.int8): "I8",
    np.dtype(np.int16): "I16",
    np.dtype(np.uint16): "U16",
    np.dtype(np.float16): "F16",
    np.dtype(np.int32): "I32",
    np.dtype(np.uint32): "U32",
    np.dtype(np.float32): "F32",
    np.dtype(np.float64): "F64",
    np.dtype(np.int64): "I64",
    np.dtype(np.uint64): "U64",
}


def write_safetensors(path, tensors, dtypes=None):
    """A minimal safetensors writer (the format: u64 header length, JSON header, raw bytes), so
    the tests do not depend on the writer under test agreeing with itself."""
    dtypes = dtypes or {}
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        raw = a.tobytes()
        header[name] = {
            "dtype": dtypes.get(name, ST_DTYPES[a.dtype]),
            "shape": list(a.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    return Path(path)


def random_arrays(seed, n=3, elems=1024):
    rng = np.random.default_rng(seed)
    return {f"layer.{i}.weight": rng.standard_normal(elems).astype(np.float32) for i in range(n)}


@pytest.fixture
def engine():
    e = vramswap.Engine(backend="sim")
    yield e
    e.close()
    assert e.leaks()["clean"], e.leaks()


@pytest.fixture
def set_state():
    def state(engine, name):
        return next(s for s in engine.status()["sets"] if s["name"] == name)["state"]

    return state
