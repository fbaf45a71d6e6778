"""vramswap: GPU memory for many models on one GPU.

Named weight sets live in a pinned host arena and visit the device on demand: ``acquire``
brings a set to the device (loading it from its file first, evicting least recently used idle
sets to stay under the device budget), ``offload`` frees its device memory while keeping the host
copy for a fast swap-in, ``release`` drops the host copy too. Everything here is a thin layer over
the Rust crate; errors are :class:`vramswap.Error` subclasses carrying the Rust message.

>>> import numpy as np, vramswap
>>> with vramswap.Engine(backend="sim", device_budget="64MiB") as engine:
...     engine.register_arrays("tiny", {"w": np.arange(4, dtype=np.float32)})
...     with engine.acquire("tiny") as h:
...         h.to_numpy("w").tolist()
[0.0, 1.0, 2.0, 3.0]
"""

from ._vramswap import (
    AlreadyExistsError,
    BackendUnavailableError,
    ChecksumMismatchError,
    DeviceTensor,
    DriverError,
    Engine,
    Error,
    Handle,
    InvalidArgumentError,
    InvalidStateError,
    IoError,
    MalformedFileError,
    NotFoundError,
    OutOfMemoryError,
    UnsupportedError,
    InvalidDeviceError,
    StoreError,
    __version__,
    check_free,
    info,
    store_status,
    save_safetensors,
)

__all__ = [
    "AlreadyExistsError",
    "BackendUnavailableError",
    "ChecksumMismatchError",
    "DeviceTensor",
    "DriverError",
    "Engine",
    "Error",
    "Handle",
    "InvalidArgumentError",
    "InvalidStateError",
    "IoError",
    "MalformedFileError",
    "NotFoundError",
    "OutOfMemoryError",
    "UnsupportedError",
    "InvalidDeviceError",
    "StoreError",
    "__version__",
    "check_free",
    "info",
    "store_status",
    "save_safetensors",
]
