"""DLPack export on the cuda backend, over the emulated CUDA driver (emu/) where no GPU is:
the capsule's DLManagedTensor is read with ctypes, consumed as a framework would, and the
emulator's exit report must show nothing leaked."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EMU = Path(__file__).resolve().parents[2] / "target" / "debug" / "libvramswap_cuda_emu.so"

CHILD = r'''
import ctypes, json
import numpy as np
import vramswap

class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]

class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]

class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]

class DLManagedTensor(ctypes.Structure):
    pass

DLManagedTensor._fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p),
                            ("deleter", ctypes.CFUNCTYPE(None, ctypes.POINTER(DLManagedTensor)))]
get = ctypes.pythonapi.PyCapsule_GetPointer
get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
set_name = ctypes.pythonapi.PyCapsule_SetName
set_name.restype, set_name.argtypes = ctypes.c_int, [ctypes.py_object, ctypes.c_char_p]
USED = ctypes.c_char_p(b"used_dltensor")  # outlives the capsules

def guards(e):
    return e.status()["sets"][0]["guards"]

out = {}
with vramswap.Engine(backend="cuda") as e:
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    e.register_arrays("a", {"w": w, "b": np.array([0x3F80, 0x4000], np.uint16)}, dtypes={"b": "BF16"})
    h = e.acquire("a")
    t = h.tensor("w")
    cap = t.__dlpack__(max_version=(1, 0), stream=None)
    m = DLManagedTensor.from_address(get(cap, b"dltensor"))
    d = m.dl_tensor
    out["w"] = dict(data_ok=d.data == h.device_ptr("w"), device=[d.device.device_type, d.device.device_id],
                    ndim=d.ndim, shape=[d.shape[i] for i in range(d.ndim)],
                    dtype=[d.dtype.code, d.dtype.bits, d.dtype.lanes], strides_null=not d.strides,
                    dlpack_device=list(t.__dlpack_device__()))
    b = h.tensor("b").__dlpack__()
    bd = DLManagedTensor.from_address(get(b, b"dltensor")).dl_tensor.dtype
    out["bf16"] = [bd.code, bd.bits]
    # Consumed as a framework does: rename, then call the deleter when done.
    set_name(b, USED.value)
    mb = ctypes.cast(get(b, USED.value), ctypes.POINTER(DLManagedTensor))
    mb.contents.deleter(mb)
    # An export holds its own share of the guard (the DLPack contract: valid until the deleter):
    # even an explicit release keeps the set held until the capsule goes...
    h.release()
    out["guards_with_capsule"] = guards(e)
    # ...and nothing more can be exported from the released handle.
    try:
        t.__dlpack__()
        out["export_after_release"] = "allowed"
    except BufferError as ex:
        out["export_after_release"] = "released" in str(ex)
    del h, t
    del cap, m, d
    out["guards_after_capsule"] = guards(e)
    # hold=False (the adopt pattern): the view does not keep the set.
    h2 = e.acquire("a")
    view = h2.tensor("w", hold=False).__dlpack__()
    h2.release()
    out["guards_with_view"] = guards(e)
    del view
    try:
        e.acquire("a").tensor("w").__dlpack__(copy=True)
    except BufferError as ex:
        out["copy_refused"] = "copy" in str(ex)
    try:
        e.acquire("a").tensor("w").__dlpack__(stream=0)
    except ValueError as ex:
        out["stream0_refused"] = "ambiguous" in str(ex)
    # A capsule outlives its engine's close(): the memory stays until the capsule goes.
    h3 = e.acquire("a")
    late = h3.tensor("w").__dlpack__()
# Read it back through the driver after close(): still the tensor's bytes.
import os
drv = ctypes.CDLL(os.environ["VRAMSWAP_CUDA_DRIVER"])
late_ptr = DLManagedTensor.from_address(get(late, b"dltensor")).dl_tensor.data
# vramswap leaves no context current on this thread (it puts back what it found): bind the
# device's primary context as another library would.
ctx = ctypes.c_void_p()
assert drv.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), 0) == 0
assert drv.cuCtxSetCurrent(ctx) == 0
buf = (ctypes.c_float * 12)()
rc = drv.cuMemcpyDtoH_v2(buf, ctypes.c_uint64(late_ptr), ctypes.c_size_t(48))
out["read_after_close"] = [rc, list(buf)]
del late
drv.cuCtxSetCurrent(None)
drv.cuDevicePrimaryCtxRelease_v2(0)
print(json.dumps(out))
'''


@pytest.mark.skipif(not EMU.is_file(), reason=f"the emulated CUDA driver {EMU} is not built (cargo build -p vramswap-cuda-emu)")
def test_dlpack_capsules_describe_the_device_tensor_and_free_cleanly(tmp_path):
    report = tmp_path / "emu-report.json"
    env = dict(os.environ, VRAMSWAP_CUDA_DRIVER=str(EMU), VRAMSWAP_EMU_REPORT=str(report))
    r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["w"] == dict(data_ok=True, device=[2, 0], ndim=2, shape=[3, 4], dtype=[2, 32, 1],
                            strides_null=True, dlpack_device=[2, 0])
    assert out["bf16"] == [4, 16]
    assert out["guards_with_capsule"] == 1 and out["guards_after_capsule"] == 0
    assert out["export_after_release"] is True
    assert out["guards_with_view"] == 0
    assert out["copy_refused"] is True
    assert out["stream0_refused"] is True
    assert out["read_after_close"] == [0, [float(i) for i in range(12)]]
    assert json.loads(report.read_text())["clean"] is True, report.read_text()


@pytest.mark.skipif(not EMU.is_file(), reason=f"the emulated CUDA driver {EMU} is not built")
def test_the_round_robin_example_runs_on_the_cuda_backend_and_leaks_nothing(tmp_path):
    report = tmp_path / "emu-report.json"
    env = dict(os.environ, VRAMSWAP_CUDA_DRIVER=str(EMU), VRAMSWAP_EMU_REPORT=str(report))
    example = Path(__file__).resolve().parents[2] / "examples" / "python" / "round_robin.py"
    r = subprocess.run([sys.executable, str(example), "--backend", "cuda", "--models", "3", "--mb", "4",
                        "--fit", "2", "--rounds", "2"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "backend cuda" in r.stdout and "counters:" in r.stdout
    assert json.loads(report.read_text())["clean"] is True, report.read_text()
