"""PyTorch on vramswap, for any model, with no per-model code.

Runs on a CUDA engine (the model's tensors become CUDA tensors over the set's device memory) and,
with the same code, on CPU PyTorch over the simulated device with host-visible memory
(``VRAMSWAP_SIM_CONF=host_visible:true``, ``Engine(backend="sim")``): the tensors become CPU
tensors over the set's memory, and a read of an offloaded model's weights outside the wrapped forwards
faults (SIGSEGV), as an illegal address does on a GPU. Recording the current CUDA stream is the
only CUDA-only step.

``adopt(engine, name, obj)`` moves every parameter and buffer of a model into one weight set and
rebinds them, zero-copy through DLPack, to tensors over the set's stable device addresses. Each
module's ``forward`` is wrapped (as accelerate's hooks wrap it): the outermost wrapped call
acquires the set (the first call after an offload brings the weights back) and releases it once
the call returns or raises, so ``engine.offload(name)`` frees the device memory between calls
while the module objects stay untouched. The wrappers sit on every top-level module and on every
submodule that owns parameters or buffers itself, so entry points that are not the top-level
``forward`` (``SentenceTransformer.encode``, a VAE's ``decode``) still hold the set while any of
its layers runs. What runs outside any module call does not: a backward pass
(training), or code that reads ``module.weight`` directly; acquire the set around such code
(``with engine.acquire(name): ...``)::

    engine = vramswap.Engine(device_budget="20GiB")
    model = vramswap.torch.adopt(engine, "sdxl", pipe)   # a diffusers pipeline, or any module
    image = pipe(prompt).images[0]                        # weights on the device
    engine.offload("sdxl")                                # device memory freed; pipe unchanged
    image = pipe(prompt).images[0]                        # swapped back in by the wrapper

``use_allocator()`` routes PyTorch's CUDA allocations through vramswap's caching allocator
(``torch.cuda.memory.CUDAPluggableAllocator`` over the C ABI's ``vramswap_torch_malloc`` and
``vramswap_torch_free``). That allocator is the C ABI's own process-wide one, not an ``Engine``'s:
when PyTorch's allocations fill the device, it does not offload an engine's idle sets. Give the
engine a ``device_budget`` that leaves PyTorch room, or offload explicitly.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from . import Engine, UnsupportedError, _vramswap

MALLOC_SYMBOL = "vramswap_torch_malloc"
FREE_SYMBOL = "vramswap_torch_free"


def _torch():
    try:
        import torch  # noqa: PLC0415 - optional dependency
    except ImportError as e:
        raise UnsupportedError(
            "vramswap.torch needs PyTorch with CUDA (pip install torch); it is not installed"
        ) from e
    return torch


def _require_cuda():
    torch = _torch()
    if not torch.cuda.is_available():
        raise UnsupportedError("vramswap.torch needs a CUDA GPU; torch.cuda.is_available() is False")
    return torch


def _engine_device(engine: Engine):
    """PyTorch, and the device adopted tensors live on: the engine's CUDA device, or the CPU on
    the host-visible simulated device."""
    torch = _torch()
    if engine.backend == "cuda":
        _require_cuda()
        return torch, torch.device("cuda", engine.device)
    if engine.host_visible:
        return torch, torch.device("cpu")
    raise UnsupportedError(
        f"vramswap.torch.adopt needs an engine on the cuda backend, or on the sim backend with "
        f"host-visible memory (VRAMSWAP_SIM_CONF=host_visible:true); this one is `{engine.backend}` "
        "without it, whose memory PyTorch cannot view"
    )


def _refuse_foreign_placement(modules, device, torch) -> None:
    """Refuses what adopt cannot take over cleanly: accelerate's offload hooks (they move weights
    themselves), and tensors on a CUDA device while adopting onto the CPU."""
    for prefix, m in modules:
        for sub_name, sub in m.named_modules():
            if hasattr(sub, "_hf_hook"):
                where = ".".join(x for x in (prefix, sub_name) if x) or type(m).__name__
                raise UnsupportedError(
                    f"`{where}` carries an accelerate hook (enable_model_cpu_offload, "
                    "enable_sequential_cpu_offload or device_map offload): it moves weights "
                    "itself and would fight vramswap. Build the pipeline without it (or call "
                    "pipe.remove_all_hooks()) and adopt it: vramswap does that offloading"
                )
        if device.type == "cpu":
            for key, t in list(m.named_parameters()) + list(m.named_buffers()):
                if t is not None and t.device.type != "cpu":
                    raise UnsupportedError(
                        f"`{prefix + '.' if prefix else ''}{key}` is on {t.device}, but this engine's "
                        "memory is host-visible (CPU tensors): move the model to the CPU first "
                        "(model.to('cpu')) or use an engine on the cuda backend"
                    )


def _modules(obj: Any, torch) -> List[Tuple[str, Any]]:
    """The modules an object holds: itself, a dict's values, a pipeline's components or
    attributes (one level deep), without duplicates."""
    nn = torch.nn
    if isinstance(obj, nn.Module):
        return [("", obj)]
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(getattr(obj, "components", None), dict):  # diffusers pipelines
        items = obj.components.items()
    else:
        items = vars(obj).items() if hasattr(obj, "__dict__") else []
    seen, out = set(), []
    for k, v in items:
        if isinstance(v, nn.Module) and id(v) not in seen:
            seen.add(id(v))
            out.append((str(k), v))
    if not out:
        raise UnsupportedError(
            f"{type(obj).__name__} is not an nn.Module and holds none in its attributes or keys"
        )
    return out


# torch dtype name -> (safetensors dtype, the integer view PyTorch exports to NumPy with)
_VIEWS = {
    "bfloat16": ("BF16", "int16"),
    "float8_e4m3fn": ("F8_E4M3", "uint8"),
    "float8_e5m2": ("F8_E5M2", "uint8"),
}


def _host_array(t, torch):
    """A NumPy view (or copy, for device tensors) of a tensor's bytes, and its dtype override."""
    c = t.detach()
    if c.device.type != "cpu":
        c = c.to("cpu")
    c = c.contiguous()
    name = str(c.dtype).replace("torch.", "")
    if name in _VIEWS:
        st, view = _VIEWS[name]
        return c.view(getattr(torch, view)).numpy(), st
    return c.numpy(), None


class _Wake:
    """What the forward wrappers of one adopted model share: the engine, the set's name and, per
    thread, how deep in wrapped calls the thread is (only the outermost call acquires).

    Copies of a module (``copy.deepcopy``) share it: the copy's wrappers hold the same set."""

    __slots__ = ("engine", "name", "cuda", "device", "torch", "local")

    def __init__(self, engine, name, device, torch):
        self.engine = engine
        self.name = name
        self.cuda = device.type == "cuda"
        self.device = device
        self.torch = torch
        self.local = threading.local()

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


def _wrapped_forward(wake: _Wake, module, *args, **kwargs):
    """A wrapped module's ``forward``: the outermost wrapped call on a thread acquires the set and
    releases it when the call returns or raises; the calls nested in it run under its handle, so
    a forward costs one acquire, not one per layer."""
    local = wake.local
    depth = getattr(local, "depth", 0)
    if depth:
        local.depth = depth + 1
        try:
            return module._vramswap_forward(*args, **kwargs)
        finally:
            local.depth = depth
    h = wake.engine.acquire(wake.name)
    local.depth = 1
    try:
        return module._vramswap_forward(*args, **kwargs)
    finally:
        local.depth = 0
        try:
            if wake.cuda:
                # Offloads wait for the kernels this forward queued on the engine's device's
                # current stream. (On the CPU the forward has finished when this runs.)
                h.record_stream(wake.torch.cuda.current_stream(wake.device).cuda_stream)
        finally:
            h.release()


class _ForwardWrap:
    """One module's ``forward`` replaced by :func:`_wrapped_forward`, as accelerate's hooks do
    (``functools.partial`` over the module, so ``copy.deepcopy`` rebinds it to the copy, and
    ``functools.update_wrapper``, so ``inspect.signature(module.forward)`` is the original's:
    transformers reads it). A wrapper costs a Python call per module call; forward hooks cost
    PyTorch's slow call path, about 1.6 µs per hooked module (python/bench/torch_cpu.py)."""

    def __init__(self, module, wake: _Wake):
        self.module = module
        self.own = module.__dict__.get("forward")  # an instance-level forward, kept to restore
        original = module.forward
        module._vramswap_forward = original
        module.forward = functools.update_wrapper(functools.partial(_wrapped_forward, wake, module), original)

    def remove(self) -> None:
        m = self.module
        if "forward" in m.__dict__:
            del m.__dict__["forward"]
        if self.own is not None:
            m.forward = self.own
        m.__dict__.pop("_vramswap_forward", None)


class AdoptedModel:
    """What ``adopt`` did: the set's name, the tensors it rebound, the forward wrappers it added."""

    def __init__(self, engine: Engine, name: str, modules, tensors: Dict[str, Any], hooks):
        self.engine = engine
        self.name = name
        self.modules = modules
        self.tensors = tensors
        self._hooks = hooks

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def remove_hooks(self) -> None:
        """Stops acquiring the set on forward (the tensors keep their device addresses)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def __repr__(self) -> str:
        return f"<AdoptedModel `{self.name}`: {len(self.tensors)} tensors, {self.bytes} bytes>"


def adopt(engine: Engine, name: str, obj: Any) -> AdoptedModel:
    """Registers all parameters and buffers of ``obj`` (an ``nn.Module``, a dict with modules, a
    diffusers pipeline, a SentenceTransformer, ...) as the weight set ``name``, rebinds them to
    the set's device memory and hooks every module's forward to acquire the set.

    With a shared host store (``Engine(store=...)``, ``VRAMSWAP_STORE``), the set goes into the
    store, and a later process can adopt the same model built on the meta device
    (``with torch.device("meta"): model = Cls(config)``): its weights then come from the store's
    copy, with nothing read from disk and nothing built on the CPU. A meta model's tensors must
    match the stored set's names, dtypes and shapes."""
    torch, device = _engine_device(engine)
    if not engine.stable_addresses:
        raise UnsupportedError(
            "adopt needs stable device addresses (the CUDA virtual-memory API), which this "
            "device or configuration does not offer"
        )
    modules = _modules(obj, torch)
    tensors: Dict[str, Any] = {}
    seen: Dict[int, str] = {}
    for prefix, m in modules:
        named = list(m.named_parameters(remove_duplicate=False)) + list(m.named_buffers(remove_duplicate=False))
        for local, t in named:
            if t is None or id(t) in seen:
                continue  # tied weights are one tensor, stored once
            key = f"{prefix}.{local}" if prefix else local
            seen[id(t)] = key
            tensors[key] = t
    meta = [k for k, t in tensors.items() if t.is_meta]
    if meta:
        _adopt_from_store(engine, name, tensors, meta)
    else:
        _refuse_foreign_placement(modules, device, torch)
        arrays, dtypes = {}, {}
        for key, t in tensors.items():
            arrays[key], st = _host_array(t, torch)
            if st:
                dtypes[key] = st
        engine.register_arrays(name, arrays, dtypes or None)
        del arrays
    try:
        tensors = _rebind(engine, name, modules, tensors, meta, torch)
    except BaseException:
        # A failure before the tensors are rebound (all are exported first, then assigned)
        # leaves nothing half-adopted: the set goes (with its store connection), the model
        # keeps its tensors, and a retry under the same name works.
        try:
            engine.unregister(name)
        except Exception:
            pass
        raise
    wake = _Wake(engine, name, device, torch)
    hooks = []
    wrapped = set()
    for _, m in modules:
        for sub in m.modules():
            owns = any(True for _ in sub.parameters(recurse=False)) or any(True for _ in sub.buffers(recurse=False))
            if (sub is m or owns) and id(sub) not in wrapped:
                wrapped.add(id(sub))
                hooks.append(_ForwardWrap(sub, wake))
    return AdoptedModel(engine, name, modules, tensors, hooks)


def _rebind(engine: Engine, name: str, modules, tensors: Dict[str, Any], meta, torch) -> Dict[str, Any]:
    """Rebinds every tensor to the set's memory (zero-copy through DLPack); returns them."""
    with engine.acquire(name) as h:
        over = {}
        for key, t in tensors.items():
            # hold=False: the parameters live as long as the model, and must not keep the set
            # on the device; the forward wrappers hold it whenever the model runs.
            dev = torch.from_dlpack(h.tensor(key, hold=False))
            if dev.dtype != t.dtype:
                dev = dev.view(t.dtype)  # 8-bit floats travel as uint8
            over[id(t)] = dev
        if meta:
            return _replace_meta(modules, tensors, over, torch)
        for t in tensors.values():
            t.data = over[id(t)]  # the same Parameter/buffer object, now over the set's memory
        return tensors


def _adopt_from_store(engine: Engine, name: str, tensors: Dict[str, Any], meta: List[str]) -> None:
    """A model built on the meta device gets its weights from the shared host store, where an
    earlier process's ``adopt`` put them: nothing is read from disk or built on the CPU."""
    if len(meta) != len(tensors):
        real = next(k for k, t in tensors.items() if not t.is_meta)
        raise _vramswap.InvalidArgumentError(
            f"the model mixes meta tensors (`{meta[0]}`) with materialised ones (`{real}`): "
            "build it wholly on the meta device to adopt it from the store, or not at all"
        )
    engine.register_stored(name, {k: (str(t.dtype), list(t.shape)) for k, t in tensors.items()})


def _replace_meta(modules, tensors: Dict[str, Any], over: Dict[int, Any], torch) -> Dict[str, Any]:
    """Puts a tensor over the set's memory in each place a meta parameter or buffer was (a meta
    tensor's ``.data`` cannot be set to a real one), keeping tied weights tied, as accelerate's
    ``set_module_tensor_to_device`` does."""
    made: Dict[int, Any] = {}
    for _, m in modules:
        for sub in m.modules():
            for pname, p in list(sub._parameters.items()):
                if p is not None and id(p) in over:
                    if id(p) not in made:
                        made[id(p)] = type(p)(over[id(p)], requires_grad=p.requires_grad)
                    sub._parameters[pname] = made[id(p)]
            for bname, b in list(sub._buffers.items()):
                if b is not None and id(b) in over:
                    made.setdefault(id(b), over[id(b)])
                    sub._buffers[bname] = made[id(b)]
    return {k: made[id(t)] for k, t in tensors.items()}


def _allocator_candidates(path: Optional[str]) -> List[Path]:
    c = []
    if path:
        c.append(Path(path))
    if os.environ.get("VRAMSWAP_LIB"):
        c.append(Path(os.environ["VRAMSWAP_LIB"]))
    c.append(Path(_vramswap.__file__))  # the extension links the crate's C ABI when it has one
    here = Path(__file__).resolve().parent
    c += [here / "libvramswap.so", here.parent / "libvramswap.so"]
    return c


def find_allocator_library(path: Optional[str] = None) -> str:
    """The first shared library that exports the allocator entry points."""
    looked = []
    for cand in _allocator_candidates(path):
        looked.append(str(cand))
        if not cand.is_file():
            continue
        try:
            lib = ctypes.CDLL(str(cand))
        except OSError:
            continue
        if hasattr(lib, MALLOC_SYMBOL) and hasattr(lib, FREE_SYMBOL):
            return str(cand)
    raise UnsupportedError(
        f"no library exports {MALLOC_SYMBOL}/{FREE_SYMBOL} (vramswap's C ABI, `vramswap::capi`); "
        f"looked in: {', '.join(looked)}. Build the crate with the C ABI and set VRAMSWAP_LIB to "
        "its libvramswap.so"
    )


def use_allocator(path: Optional[str] = None):
    """Makes vramswap's caching allocator PyTorch's CUDA allocator. Call it before PyTorch
    allocates any CUDA memory (PyTorch refuses to switch afterwards)."""
    torch = _require_cuda()
    lib = find_allocator_library(path)
    alloc = torch.cuda.memory.CUDAPluggableAllocator(lib, MALLOC_SYMBOL, FREE_SYMBOL)
    torch.cuda.memory.change_current_allocator(alloc)
    return alloc
