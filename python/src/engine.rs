//! `vramswap.Engine`: the crate's `SwapEngine` with a caching allocator attached, shared by
//! every Python thread.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use vramswap::alloc::CachingAllocator;
use vramswap::backend::SharedBackend;
use vramswap::load::LoadOptions;
use vramswap::setup::EngineSetup;
use vramswap::swap::SwapEngine;
use vramswap::weights::DType;
use vramswap::{DevicePtr, Error, Stream};

use crate::convert::{bytes_arg, dtype_from_name, dtype_of_numpy, serde_to_py};
use crate::dlpack::DlDevice;
use crate::errors::{to_py, IntoPyResult};
use crate::handle::{Handle, Slot};

/// What a closed engine no longer has.
#[derive(Clone)]
pub struct Live {
    pub swap: SwapEngine,
    pub alloc: Arc<CachingAllocator>,
}

/// Named weight sets on one device: registered lazily from files or copied from arrays, kept
/// in a pinned host arena, brought to the device by `acquire` and offloaded under budgets.
#[pyclass(module = "vramswap._vramswap", name = "Engine", frozen)]
pub struct Engine {
    live: RwLock<Option<Live>>,
    backend: SharedBackend,
    selected_because: String,
    handles: Mutex<Vec<Weak<Slot>>>,
}

fn closed() -> PyErr {
    to_py(Error::InvalidState("the engine is closed".into()))
}

impl Engine {
    /// A clone of the live engine (two `Arc`s), or the closed error. The lock is never held
    /// across a call that releases the GIL.
    pub fn live(&self) -> PyResult<Live> {
        self.live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(closed)
    }

    fn swap(&self) -> PyResult<SwapEngine> {
        Ok(self.live()?.swap)
    }
}

impl Drop for Engine {
    /// An engine collected without `close()`: dropping it joins its background loads, so do it
    /// without the GIL (other Python threads keep running, and a load's progress never needs
    /// it).
    fn drop(&mut self) {
        let live = self
            .live
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(live) = live {
            Python::with_gil(|py| py.allow_threads(move || drop(live)));
        }
    }
}

/// One contiguous array, referenced (so its memory stays) while the engine copies its bytes.
/// The limited API of Python 3.9 has no buffer protocol; the array interface gives the address.
pub struct ArrayBytes {
    name: String,
    dtype: DType,
    shape: Vec<u64>,
    _array: PyObject,
    data: usize,
    len: usize,
}

fn array_bytes(
    py: Python<'_>,
    np: &Bound<'_, PyModule>,
    name: String,
    value: &Bound<'_, PyAny>,
    dtype: Option<String>,
) -> PyResult<ArrayBytes> {
    // PyTorch tensors of any dtype (bf16 and 8-bit floats as integer views of their bytes).
    let (value, dtype) = match crate::convert::torch_host_view(value)? {
        Some((v, Some(d))) if dtype.is_none() => (v, Some(d.name().to_string())),
        Some((v, _)) => (v, dtype),
        None => (value.clone(), dtype),
    };
    let value = &value;
    let kw = pyo3::types::PyDict::new(py);
    kw.set_item("order", "C")?;
    // `asarray(order="C")`, not `ascontiguousarray`, which makes 0-d arrays 1-d.
    let a = np.call_method("asarray", (value,), Some(&kw))?;
    let npdtype: String = a.getattr("dtype")?.getattr("str")?.extract()?;
    let itemsize: u64 = a.getattr("dtype")?.getattr("itemsize")?.extract()?;
    let dtype = match dtype {
        Some(d) => {
            let d: DType = match dtype_from_name(&d) {
                Some(d) => d,
                None => d.parse().py()?,
            };
            if d.size_bytes() != itemsize {
                return Err(to_py(Error::InvalidArgument(format!(
                    "array `{name}`: dtype {d} has {} bytes per element, the array's {npdtype} \
                     has {itemsize} (give bf16 as uint16 bit patterns)",
                    d.size_bytes()
                ))));
            }
            d
        }
        None => dtype_of_numpy(&npdtype).ok_or_else(|| {
            to_py(Error::InvalidArgument(format!(
                "array `{name}`: NumPy dtype {npdtype} has no safetensors dtype (big-endian, \
                 object and string arrays are not weights); pass dtypes={{name: ...}} for bf16"
            )))
        })?,
    };
    let shape: Vec<u64> = a.getattr("shape")?.extract()?;
    let len: usize = a.getattr("nbytes")?.extract()?;
    let iface = a.getattr("__array_interface__")?;
    let (data, _readonly): (usize, bool) = iface.get_item("data")?.extract()?;
    let _ = py;
    Ok(ArrayBytes {
        name,
        dtype,
        shape,
        _array: a.unbind(),
        data,
        len,
    })
}

/// The arrays of a dict, with their safetensors dtypes (`dtypes` overrides by name).
pub fn collect_arrays(
    py: Python<'_>,
    arrays: &Bound<'_, PyDict>,
    dtypes: Option<&Bound<'_, PyDict>>,
) -> PyResult<Vec<ArrayBytes>> {
    let np = py.import("numpy")?;
    let mut held = Vec::with_capacity(arrays.len());
    for (k, v) in arrays.iter() {
        let key: String = k.extract()?;
        // A name (`"BF16"`, `"bfloat16"`) or a `torch.dtype`, read through its `str()`.
        let dtype: Option<String> = match dtypes {
            Some(d) => d
                .get_item(&key)?
                .map(|x| x.str().and_then(|s| s.extract()))
                .transpose()?,
            None => None,
        };
        held.push(array_bytes(py, &np, key, &v, dtype)?);
    }
    if let Some(d) = dtypes {
        for k in d.keys() {
            if !arrays.contains(&k)? {
                return Err(to_py(Error::InvalidArgument(format!(
                    "dtypes names `{k}`, which is not among the arrays"
                ))));
            }
        }
    }
    Ok(held)
}

/// (name, dtype, shape, bytes) of each array, borrowing from `held`.
pub fn as_list(held: &[ArrayBytes]) -> Vec<(String, DType, Vec<u64>, &[u8])> {
    held.iter()
        .map(|a| {
            // SAFETY: `a._array` is a C-contiguous NumPy array whose `__array_interface__`
            // gave `data`, the address of its `len` = `nbytes` bytes; the reference in `held`,
            // which this borrow cannot outlive, keeps that memory alive (it is only read).
            let bytes: &[u8] = if a.len == 0 {
                &[]
            } else {
                unsafe { std::slice::from_raw_parts(a.data as *const u8, a.len) }
            };
            (a.name.clone(), a.dtype, a.shape.clone(), bytes)
        })
        .collect()
}

#[pymethods]
impl Engine {
    #[new]
    #[pyo3(signature = (backend="auto", device=0, device_budget=None, host_budget=None, idle_timeout=None, alloc_conf=None, swap_conf=None, sim_capacity=None, store=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        backend: &str,
        device: i32,
        device_budget: Option<&Bound<'_, PyAny>>,
        host_budget: Option<&Bound<'_, PyAny>>,
        idle_timeout: Option<f64>,
        alloc_conf: Option<String>,
        swap_conf: Option<String>,
        sim_capacity: Option<&Bound<'_, PyAny>>,
        store: Option<PathBuf>,
    ) -> PyResult<Engine> {
        // The crate's one setup (`vramswap::setup`): arguments over the environment.
        let mut setup = EngineSetup {
            backend: backend.parse().py()?,
            device,
            sim_capacity: bytes_arg(sim_capacity, "sim_capacity")?,
            alloc_conf,
            swap_conf,
            device_budget: bytes_arg(device_budget, "device_budget")?,
            host_budget: bytes_arg(host_budget, "host_budget")?,
            idle_timeout: None,
            store,
        };
        if let Some(t) = idle_timeout {
            if !t.is_finite() || t <= 0.0 {
                return Err(to_py(Error::InvalidArgument(format!(
                    "idle_timeout must be a positive number of seconds, not {t}"
                ))));
            }
            setup.idle_timeout = Some(Duration::try_from_secs_f64(t).map_err(|_| {
                to_py(Error::InvalidArgument(format!(
                    "idle_timeout of {t} seconds is out of range"
                )))
            })?);
        }
        let built = py.allow_threads(|| setup.build()).py()?;
        let (backend, why) = (built.backend, built.selected_because);
        let live = Live {
            swap: built.engine,
            alloc: built.alloc,
        };
        Ok(Engine {
            live: RwLock::new(Some(live)),
            backend,
            selected_because: why,
            handles: Mutex::new(Vec::new()),
        })
    }

    /// Registers a `.safetensors` file or a model directory; nothing is read until first use.
    fn register(&self, py: Python<'_>, name: &str, path: PathBuf) -> PyResult<()> {
        let swap = self.swap()?;
        py.allow_threads(|| swap.register_path(name, &path, LoadOptions::default()))
            .py()
    }

    /// Registers a dict of NumPy arrays; their bytes are copied into the pinned arena.
    #[pyo3(signature = (name, arrays, dtypes=None))]
    fn register_arrays(
        &self,
        py: Python<'_>,
        name: &str,
        arrays: &Bound<'_, PyDict>,
        dtypes: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let swap = self.swap()?;
        let held = collect_arrays(py, arrays, dtypes)?;
        let list = as_list(&held);
        py.allow_threads(|| swap.register_arrays(name, list)).py()?;
        drop(held);
        Ok(())
    }

    /// Registers the set `name` as the shared host store holds it (put there by an earlier
    /// process's `register_arrays` or `vramswap.torch.adopt`), reading nothing from disk.
    /// `tensors` maps each tensor name to `(dtype, shape)`; a stored set that differs in any of
    /// them is refused. Needs an engine with a store (`store=`, `VRAMSWAP_STORE`).
    fn register_stored(
        &self,
        py: Python<'_>,
        name: &str,
        tensors: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        let swap = self.swap()?;
        let mut specs = Vec::with_capacity(tensors.len());
        for (k, v) in tensors.iter() {
            let tname: String = k.extract()?;
            let (dtype, shape): (Bound<'_, PyAny>, Vec<u64>) = v.extract()?;
            let dname: String = dtype.str()?.extract()?;
            let dtype = crate::convert::dtype_from_name(&dname).ok_or_else(|| {
                to_py(Error::InvalidArgument(format!(
                    "tensor `{tname}`: `{dname}` is not a dtype vramswap knows"
                )))
            })?;
            specs.push(vramswap::weights::TensorSpec {
                name: tname,
                dtype,
                shape,
            });
        }
        py.allow_threads(|| swap.register_stored(name, &specs)).py()
    }

    /// Brings the set to the device (loading it first if needed) and returns a handle that keeps
    /// it there until released.
    fn acquire(&self, py: Python<'_>, name: &str) -> PyResult<Handle> {
        let swap = self.swap()?;
        let guard = py.allow_threads(|| swap.acquire(name)).py()?;
        let props = self.backend.properties();
        let device = if props.backend == vramswap::BackendKind::Cuda {
            Some(DlDevice::Cuda(props.ordinal))
        } else if props.host_visible {
            Some(DlDevice::Cpu)
        } else {
            None
        };
        let handle = Handle::new(guard, device);
        let mut hs = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        if hs.len() >= 64 {
            hs.retain(|w| w.strong_count() > 0);
        }
        hs.push(Arc::downgrade(handle.slot()));
        drop(hs);
        if self.closed() {
            // `close()` ran while this acquire waited: it could not see this handle.
            handle.release(py);
            return Err(closed());
        }
        Ok(handle)
    }

    /// Starts bringing the set to the device in the background.
    fn prefetch(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        let swap = self.swap()?;
        py.allow_threads(|| swap.prefetch(name)).py()
    }

    /// Frees the set's device memory; its host copy stays for a fast swap-in.
    fn offload(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        let swap = self.swap()?;
        py.allow_threads(|| swap.offload(name)).py()
    }

    /// Frees the set's device memory and its host copy; it reloads from its file on next use.
    fn release(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        let swap = self.swap()?;
        py.allow_threads(|| swap.release(name)).py()
    }

    /// Removes the set entirely.
    fn unregister(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        let swap = self.swap()?;
        py.allow_threads(|| swap.unregister(name)).py()
    }

    /// Offloads every set no handle holds; returns how many.
    fn offload_idle(&self, py: Python<'_>) -> PyResult<usize> {
        let swap = self.swap()?;
        py.allow_threads(|| swap.offload_idle()).py()
    }

    /// Names of the registered sets.
    fn names(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        // The engine's lock can be held for a while (a verified swap-in checks its copy under
        // it): wait for it without the GIL.
        let swap = self.swap()?;
        Ok(py.allow_threads(|| swap.names()))
    }

    /// The Rust status JSON as a dict.
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let swap = self.swap()?;
        let st = py.allow_threads(|| swap.status());
        serde_to_py(py, &st)
    }

    /// The caching allocator's statistics as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let st = self.live()?.alloc.stats();
        serde_to_py(py, &st)
    }

    /// Allocates device memory from the engine's caching allocator (which offloads idle sets
    /// when the device is full); returns the address.
    fn allocate(&self, py: Python<'_>, nbytes: u64) -> PyResult<u64> {
        let alloc = self.live()?.alloc;
        py.allow_threads(|| alloc.allocate(nbytes, Stream::DEFAULT))
            .py()
            .map(|p| p.0)
    }

    /// Returns memory from `allocate` to the cache.
    fn free(&self, py: Python<'_>, ptr: u64) -> PyResult<()> {
        let alloc = self.live()?.alloc;
        py.allow_threads(|| alloc.free(DevicePtr(ptr))).py()
    }

    /// Gives the allocator's unused cached memory back to the device.
    fn empty_cache(&self, py: Python<'_>) -> PyResult<()> {
        let alloc = self.live()?.alloc;
        py.allow_threads(|| alloc.empty_cache()).py()
    }

    /// Releases every handle, set, allocation, stream and pinned byte. Idempotent. Except while
    /// a tensor exported through DLPack (with the default `hold=True`) lives: it holds the
    /// engine's internals (every set's device memory, the pinned arena, the streams), which are
    /// freed when the last such tensor goes, in its deleter.
    fn close(&self, py: Python<'_>) {
        let live = self.live.write().unwrap_or_else(|p| p.into_inner()).take();
        let slots: Vec<Arc<Slot>> = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .filter_map(|w| w.upgrade())
            .collect();
        py.allow_threads(move || {
            for s in slots {
                s.lock().unwrap_or_else(|p| p.into_inner()).take();
            }
            drop(live);
        });
    }

    /// True after `close()`.
    #[getter]
    fn closed(&self) -> bool {
        self.live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    /// `"cuda"` or `"sim"`.
    #[getter]
    fn backend(&self) -> String {
        self.backend.kind().to_string()
    }

    /// Whether device addresses are host addresses (the `sim` backend with
    /// `VRAMSWAP_SIM_CONF=host_visible:true`): `Handle.tensor` then exports CPU tensors, and
    /// `vramswap.torch.adopt` runs on CPU PyTorch.
    #[getter]
    fn host_visible(&self) -> bool {
        self.backend.properties().host_visible
    }

    /// The device ordinal.
    #[getter]
    fn device(&self) -> i32 {
        self.backend.properties().ordinal
    }

    /// Why `backend="auto"` chose what it chose.
    #[getter]
    fn selected_because(&self) -> &str {
        &self.selected_because
    }

    /// Whether sets keep their device addresses across offloads.
    #[getter]
    fn stable_addresses(&self) -> PyResult<bool> {
        Ok(self.swap()?.stable_addresses())
    }

    /// On `sim`: what the simulated device still holds (device bytes, allocations, mappings,
    /// pinned bytes, streams, events...), all zero after `close()`. `None` on other backends.
    fn leaks<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(dev) = self.backend.sim_device() else {
            return Ok(None);
        };
        let r = dev.leaks();
        // The fields are the one `LeakReport` definition's, serialised; `clean` is added.
        let d = pythonize::pythonize(py, &r)?
            .downcast_into::<PyDict>()
            .map_err(|e| pyo3::exceptions::PyTypeError::new_err(e.to_string()))?;
        d.set_item("clean", r.is_clean())?;
        Ok(Some(d))
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> bool {
        self.close(py);
        false
    }

    fn __repr__(&self) -> String {
        match self.live() {
            Ok(l) => format!(
                "<vramswap.Engine backend={} sets={}>",
                self.backend.kind(),
                l.swap.names().len()
            ),
            Err(_) => format!("<vramswap.Engine backend={} closed>", self.backend.kind()),
        }
    }
}
