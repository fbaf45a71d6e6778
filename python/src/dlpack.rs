//! DLPack export of device tensors (the unversioned `dltensor` capsule every framework reads).
//!
//! The exported tensor views the set's device memory with no copy. By default the export holds
//! its own share of the handle's guard until the consumer calls the deleter, as the DLPack
//! contract asks: the memory stays valid (the set stays on the device) for as long as the
//! consumer's tensor lives, whatever happens to the handle or the engine meanwhile.
//!
//! `Handle.tensor(name, hold=False)` exports a view that does not hold the set: the
//! `vramswap.torch.adopt` pattern, where framework tensors live for the model's lifetime over
//! the set's stable addresses and hooks acquire the set around each use. Only with stable
//! addresses, and the caller promises never to touch the memory while no handle holds the set.
//!
//! Either way, exporting from a handle that was released (or whose engine was closed) is a
//! `BufferError`: the memory may already be gone.

use std::ffi::{c_void, CStr};
use std::sync::Arc;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use vramswap::swap::WeightGuard;
use vramswap::weights::{DType, TensorInfo};

use crate::handle::Slot;

const DLPACK_CAPSULE: &CStr = c"dltensor";
/// `kDLCPU`.
const DL_CPU: i32 = 1;
/// `kDLCUDA`.
const DL_CUDA: i32 = 2;

/// Where an exported tensor lives, as DLPack names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DlDevice {
    /// CUDA device memory (`kDLCUDA`) of this ordinal.
    Cuda(i32),
    /// Host-visible memory (`kDLCPU`, device 0): the `sim` backend with `host_visible:true`,
    /// whose device addresses are host addresses.
    Cpu,
}

impl DlDevice {
    /// `(device_type, device_id)` as `__dlpack_device__` returns it.
    pub fn pair(self) -> (i32, i32) {
        match self {
            DlDevice::Cuda(ordinal) => (DL_CUDA, ordinal),
            DlDevice::Cpu => (DL_CPU, 0),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

/// What a managed tensor owns: its shape array and (unless exported with `hold=False`) a share
/// of the handle's guard, which keeps the set on the device until the deleter runs.
struct Context {
    _shape: Vec<i64>,
    _guard: Option<Arc<WeightGuard>>,
}

fn dl_dtype(d: DType) -> DLDataType {
    use DType::*;
    // kDLInt 0, kDLUInt 1, kDLFloat 2, kDLBfloat 4, kDLComplex 5, kDLBool 6.
    let (code, bits) = match d {
        BOOL => (6, 8),
        U8 | F8_E5M2 | F8_E4M3 | F8_E8M0 => (1, 8),
        I8 => (0, 8),
        I16 => (0, 16),
        U16 => (1, 16),
        F16 => (2, 16),
        BF16 => (4, 16),
        I32 => (0, 32),
        U32 => (1, 32),
        F32 => (2, 32),
        C64 => (5, 64),
        F64 => (2, 64),
        I64 => (0, 64),
        U64 => (1, 64),
    };
    DLDataType {
        code,
        bits,
        lanes: 1,
    }
}

unsafe extern "C" fn delete_managed(m: *mut DLManagedTensor) {
    if m.is_null() {
        return;
    }
    // SAFETY: `m` and its `manager_ctx` were made by `Box::into_raw` in `__dlpack__`, and DLPack
    // calls the deleter exactly once (the consumer after use, or the capsule destructor when
    // nobody consumed it).
    unsafe {
        let m = Box::from_raw(m);
        drop(Box::from_raw(m.manager_ctx as *mut Context));
    }
}

unsafe extern "C" fn capsule_destructor(capsule: *mut ffi::PyObject) {
    // SAFETY: called by Python with the capsule being destroyed. A consumer renames a consumed
    // capsule to `used_dltensor` and owns the tensor from then on; only an unconsumed capsule
    // still named `dltensor` is ours to delete. `PyCapsule_IsValid` sets no exception.
    unsafe {
        if ffi::PyCapsule_IsValid(capsule, DLPACK_CAPSULE.as_ptr()) == 1 {
            let m = ffi::PyCapsule_GetPointer(capsule, DLPACK_CAPSULE.as_ptr());
            delete_managed(m as *mut DLManagedTensor);
        }
    }
}

/// One tensor of a held set, exported through DLPack.
#[pyclass(module = "vramswap._vramswap", name = "DeviceTensor", frozen)]
pub struct DeviceTensor {
    ptr: u64,
    shape: Vec<i64>,
    dtype: DType,
    device: DlDevice,
    slot: Arc<Slot>,
    hold: bool,
}

impl DeviceTensor {
    pub fn new(
        ptr: u64,
        t: &TensorInfo,
        device: DlDevice,
        slot: Arc<Slot>,
        hold: bool,
    ) -> PyResult<DeviceTensor> {
        let shape = t
            .shape
            .iter()
            .map(|&d| {
                i64::try_from(d)
                    .map_err(|_| pyo3::exceptions::PyOverflowError::new_err("dimension too large"))
            })
            .collect::<PyResult<Vec<i64>>>()?;
        Ok(DeviceTensor {
            ptr,
            shape,
            dtype: t.dtype,
            device,
            slot,
            hold,
        })
    }
}

#[pymethods]
impl DeviceTensor {
    /// `(kDLCUDA, device ordinal)`, or `(kDLCPU, 0)` on a host-visible simulated device.
    fn __dlpack_device__(&self) -> (i32, i32) {
        self.device.pair()
    }

    /// A `dltensor` capsule. The set's copies were waited for when it was acquired, so the data
    /// is ready on every stream: `stream` needs no synchronisation (0, which the DLPack spec
    /// disallows for CUDA as ambiguous, is refused). `copy=True` is refused (this is a
    /// zero-copy export), and so is an export from a released handle.
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__(
        &self,
        py: Python<'_>,
        stream: Option<&Bound<'_, PyAny>>,
        max_version: Option<&Bound<'_, PyTuple>>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<PyObject> {
        let _ = max_version;
        if let (Some(s), DlDevice::Cuda(_)) = (stream, self.device) {
            if s.extract::<i64>().is_ok_and(|s| s == 0) {
                return Err(pyo3::exceptions::PyValueError::new_err(
                    "stream=0 is ambiguous and disallowed for CUDA by the DLPack spec: pass 1 for \
                     the legacy default stream, 2 for the per-thread default, or a stream handle",
                ));
            }
        }
        // The guard now, not when the tensor was made: the handle may have been released (or
        // the engine closed) since, and then the memory may be unmapped or freed.
        let guard = self
            .slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                pyo3::exceptions::PyBufferError::new_err(
                    "the handle this tensor came from was released (or its engine closed): its \
                     device memory may be gone; acquire the set again",
                )
            })?;
        if copy == Some(true) {
            return Err(pyo3::exceptions::PyBufferError::new_err(
                "vramswap exports device memory without a copy; copy=True is not supported",
            ));
        }
        if let Some(d) = dl_device {
            if d != self.device.pair() {
                return Err(pyo3::exceptions::PyBufferError::new_err(format!(
                    "the tensor is on DLPack device {:?} ({:?}), not on DLPack device {d:?}",
                    self.device.pair(),
                    self.device
                )));
            }
        }
        let mut ctx = Box::new(Context {
            _shape: self.shape.clone(),
            _guard: self.hold.then_some(guard),
        });
        let shape_ptr = ctx._shape.as_mut_ptr();
        let ndim = self.shape.len() as i32;
        let managed = Box::new(DLManagedTensor {
            dl_tensor: DLTensor {
                data: self.ptr as *mut c_void,
                device: {
                    let (device_type, device_id) = self.device.pair();
                    DLDevice {
                        device_type,
                        device_id,
                    }
                },
                ndim,
                dtype: dl_dtype(self.dtype),
                shape: shape_ptr,
                strides: std::ptr::null_mut(),
                byte_offset: 0,
            },
            manager_ctx: Box::into_raw(ctx) as *mut c_void,
            deleter: Some(delete_managed),
        });
        let raw = Box::into_raw(managed);
        // SAFETY: `raw` is a valid heap DLManagedTensor; the capsule's name is a static C
        // string; on failure no capsule owns `raw`, so it is deleted here.
        unsafe {
            let cap = ffi::PyCapsule_New(
                raw as *mut c_void,
                DLPACK_CAPSULE.as_ptr(),
                Some(capsule_destructor),
            );
            if cap.is_null() {
                delete_managed(raw);
                return Err(PyErr::fetch(py));
            }
            Ok(PyObject::from_owned_ptr(py, cap))
        }
    }

    /// Device address of the first element.
    #[getter]
    fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Shape.
    #[getter]
    fn shape(&self) -> Vec<i64> {
        self.shape.clone()
    }

    /// safetensors dtype name.
    #[getter]
    fn dtype(&self) -> &'static str {
        self.dtype.name()
    }
}
