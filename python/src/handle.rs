//! `Handle`: what `Engine.acquire` returns; keeps the set on the device until released.

use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyDict, PyList, PyTuple};
use vramswap::swap::WeightGuard;
use vramswap::weights::TensorInfo;
use vramswap::Error;

use crate::convert::numpy_dtype;
use crate::dlpack::{DeviceTensor, DlDevice};
use crate::errors::{to_py, IntoPyResult};

/// The guard a handle holds; `None` once released. Shared with the handle's `DeviceTensor`s,
/// which take their own share of the guard when exported (see `dlpack`).
pub type Slot = Mutex<Option<Arc<WeightGuard>>>;

/// A weight set held on the device. Also a context manager that releases on exit.
#[pyclass(module = "vramswap._vramswap", name = "Handle", frozen)]
pub struct Handle {
    slot: Arc<Slot>,
    name: String,
    /// Where DLPack exports live; `None`: the memory cannot be viewed from the host or a
    /// framework (the `sim` backend without `host_visible:true`).
    device: Option<DlDevice>,
}

impl Handle {
    pub fn new(guard: WeightGuard, device: Option<DlDevice>) -> Handle {
        Handle {
            name: guard.name().to_string(),
            slot: Arc::new(Mutex::new(Some(Arc::new(guard)))),
            device,
        }
    }

    pub fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }

    /// The guard, cloned out of the slot so no lock is held across a GIL release.
    fn guard(&self) -> PyResult<Arc<WeightGuard>> {
        self.slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                to_py(Error::InvalidState(format!(
                    "the handle of `{}` was released",
                    self.name
                )))
            })
    }

    fn info(&self, tensor: &str) -> PyResult<(Arc<WeightGuard>, TensorInfo)> {
        let g = self.guard()?;
        let t = g.tensor(tensor).py()?.clone();
        Ok((g, t))
    }
}

#[pymethods]
impl Handle {
    /// The set's name.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// True after `release()` (or after the engine was closed).
    #[getter]
    fn released(&self) -> bool {
        self.slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    /// One dict per tensor: `name`, `dtype` (safetensors name), `shape` (tuple), `bytes`,
    /// `offset` (within the set).
    #[getter]
    fn tensors<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let g = self.guard()?;
        let l = PyList::empty(py);
        for t in g.tensors() {
            let d = PyDict::new(py);
            d.set_item("name", &t.name)?;
            d.set_item("dtype", t.dtype.name())?;
            d.set_item("shape", PyTuple::new(py, &t.shape)?)?;
            d.set_item("bytes", t.len)?;
            d.set_item("offset", t.offset)?;
            l.append(d)?;
        }
        Ok(l)
    }

    /// Bytes of the set.
    #[getter]
    fn bytes(&self) -> PyResult<u64> {
        Ok(self.guard()?.bytes())
    }

    /// Device address of the set's first byte.
    #[getter]
    fn base(&self) -> PyResult<u64> {
        Ok(self.guard()?.base().0)
    }

    /// Whether the set keeps these addresses across offloads.
    #[getter]
    fn stable_addresses(&self) -> PyResult<bool> {
        Ok(self.guard()?.stable_addresses())
    }

    /// Device address of a tensor.
    fn device_ptr(&self, tensor: &str) -> PyResult<u64> {
        Ok(self.guard()?.tensor_ptr(tensor).py()?.0)
    }

    /// A copy of what is on the device now, as a NumPy array of the tensor's dtype and shape
    /// (bf16 as uint16 bit patterns, 8-bit floats as uint8).
    fn to_numpy<'py>(&self, py: Python<'py>, tensor: &str) -> PyResult<Bound<'py, PyAny>> {
        let (g, t) = self.info(tensor)?;
        let bytes = py.allow_threads(|| g.read_tensor(tensor)).py()?;
        let np = py.import("numpy")?;
        let raw = PyByteArray::new(py, &bytes);
        np.call_method1("frombuffer", (raw, numpy_dtype(t.dtype)))?
            .call_method1("reshape", (PyTuple::new(py, &t.shape)?,))
    }

    /// The tensor as a DLPack producer (`__dlpack__`, `__dlpack_device__`), zero-copy over the
    /// device memory: `torch.from_dlpack(handle.tensor(name))`. On CUDA a `kDLCUDA` tensor; on
    /// the `sim` backend with `host_visible:true` (`VRAMSWAP_SIM_CONF`) a `kDLCPU` one over the
    /// same host-visible memory; refused on a plain `sim` device.
    ///
    /// By default each export keeps the set on the device until the consumer lets the tensor
    /// go (even past `release()` or the engine's `close()`). With `hold=False` (stable addresses
    /// only) it does not: the consumer's tensor is valid only while some handle holds the set,
    /// which the caller guarantees (as `vramswap.torch.adopt`'s hooks do).
    #[pyo3(signature = (tensor, *, hold=true))]
    fn tensor(&self, tensor: &str, hold: bool) -> PyResult<DeviceTensor> {
        let Some(device) = self.device else {
            return Err(to_py(Error::Unsupported(format!(
                "tensor `{tensor}`: the simulated device's memory lives in the simulator and \
                 cannot be viewed by a framework through DLPack; use to_numpy() for a copy, \
                 VRAMSWAP_SIM_CONF=host_visible:true for CPU views, or the cuda backend"
            ))));
        };
        let (g, t) = self.info(tensor)?;
        if !hold && !g.stable_addresses() {
            return Err(to_py(Error::Unsupported(format!(
                "tensor `{tensor}` with hold=False: the set's addresses are not stable on this \
                 device or configuration, so a view that outlives the handle could end up over \
                 another set's memory"
            ))));
        }
        let ptr = g.tensor_ptr(tensor).py()?;
        DeviceTensor::new(ptr.0, &t, device, self.slot.clone(), hold)
    }

    /// Records that work queued on `stream` (a `CUstream` handle, e.g. PyTorch's
    /// `torch.cuda.current_stream().cuda_stream`) uses the set: a later offload waits for that
    /// work before unmapping the memory.
    fn record_stream(&self, py: Python<'_>, stream: u64) -> PyResult<()> {
        let g = self.guard()?;
        py.allow_threads(|| g.record_stream(vramswap::Stream(stream)))
            .py()
    }

    /// Lets the set go: it may be offloaded or evicted from now on. Idempotent.
    pub fn release(&self, py: Python<'_>) {
        let g = self.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        py.allow_threads(move || drop(g));
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> bool {
        self.release(py);
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "<vramswap.Handle `{}`{}>",
            self.name,
            if self.released() { " released" } else { "" }
        )
    }
}
