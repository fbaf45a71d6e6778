//! Conversions at the boundary: JSON values of the crate's serde types into Python objects,
//! NumPy dtypes to and from safetensors dtypes, budgets given as `int` or `"24GiB"`.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyList, PyString};
use serde_json::Value;
use vramswap::weights::DType;
use vramswap::Error;

use crate::errors::IntoPyResult;

/// A serde value as plain Python objects (dict, list, str, int, float, bool, None).
pub fn to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else {
                PyFloat::new(py, n.as_f64().unwrap_or(f64::NAN)).into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(a) => {
            let l = PyList::empty(py);
            for x in a {
                l.append(to_py(py, x)?)?;
            }
            l.into_any()
        }
        Value::Object(o) => {
            let d = PyDict::new(py);
            for (k, x) in o {
                d.set_item(k, to_py(py, x)?)?;
            }
            d.into_any()
        }
    })
}

/// Serialises `v` straight into Python objects (no intermediate JSON value): the same content as
/// `serde_json::to_value(v)`, with maps as dicts and unit enum variants as strings.
pub fn serde_to_py<'py, T: serde::Serialize>(
    py: Python<'py>,
    v: &T,
) -> PyResult<Bound<'py, PyAny>> {
    pythonize::pythonize(py, v).map_err(|e| {
        crate::errors::to_py(Error::InvalidState(format!(
            "cannot convert to Python: {e}"
        )))
    })
}

/// The NumPy dtype that holds a tensor of `d` (`bf16` as `uint16` bit patterns, 8-bit floats
/// as `uint8`).
pub fn numpy_dtype(d: DType) -> &'static str {
    use DType::*;
    match d {
        BOOL => "bool",
        U8 | F8_E5M2 | F8_E4M3 | F8_E8M0 => "uint8",
        I8 => "int8",
        I16 => "int16",
        U16 | BF16 => "uint16",
        F16 => "float16",
        I32 => "int32",
        U32 => "uint32",
        F32 => "float32",
        C64 => "complex64",
        F64 => "float64",
        I64 => "int64",
        U64 => "uint64",
    }
}

/// The safetensors dtype of a NumPy array protocol type string (`dtype.str`, e.g. `<f4`).
pub fn dtype_of_numpy(s: &str) -> Option<DType> {
    use DType::*;
    // Little-endian or byte-order-free ('|') only: the device copies bytes as they are.
    let (order, code) = s.split_at(1);
    if order == ">" {
        return None;
    }
    Some(match code {
        "b1" => BOOL,
        "u1" => U8,
        "i1" => I8,
        "i2" => I16,
        "u2" => U16,
        "f2" => F16,
        "i4" => I32,
        "u4" => U32,
        "f4" => F32,
        "c8" => C64,
        "f8" => F64,
        "i8" => I64,
        "u8" => U64,
        _ => return None,
    })
}

/// The safetensors dtype named `s` in safetensors' spelling (`BF16`, `F32`) or in PyTorch's
/// (`bfloat16`, `float16`, `torch.float32`, `float8_e4m3fn`).
pub fn dtype_from_name(s: &str) -> Option<DType> {
    use DType::*;
    if let Some(d) = DType::from_name(s) {
        return Some(d);
    }
    Some(match s.strip_prefix("torch.").unwrap_or(s) {
        "bool" => BOOL,
        "uint8" => U8,
        "int8" => I8,
        "int16" | "short" => I16,
        "uint16" => U16,
        "float16" | "half" => F16,
        "bfloat16" => BF16,
        "int32" | "int" => I32,
        "uint32" => U32,
        "float32" | "float" => F32,
        "complex64" => C64,
        "float64" | "double" => F64,
        "int64" | "long" => I64,
        "uint64" => U64,
        "float8_e4m3fn" => F8_E4M3,
        "float8_e5m2" => F8_E5M2,
        "float8_e8m0fnu" => F8_E8M0,
        _ => return None,
    })
}

/// The NumPy-readable form of a PyTorch tensor (detached, on the CPU, contiguous) and, for the
/// dtypes NumPy lacks (bf16, 8-bit floats), its dtype, the bytes travelling as an integer view.
/// `None` when `value` is not a PyTorch tensor.
pub fn torch_host_view<'py>(
    value: &Bound<'py, PyAny>,
) -> PyResult<Option<(Bound<'py, PyAny>, Option<DType>)>> {
    let ty = value.get_type();
    let module: String = ty.getattr("__module__")?.extract()?;
    if !(module == "torch" || module.starts_with("torch.")) || !value.hasattr("detach")? {
        return Ok(None);
    }
    let t = value
        .call_method0("detach")?
        .call_method1("to", ("cpu",))?
        .call_method0("contiguous")?;
    let name: String = t.getattr("dtype")?.str()?.extract()?;
    let d = dtype_from_name(&name);
    let view = match d {
        Some(DType::BF16) => Some("int16"),
        Some(DType::F8_E4M3 | DType::F8_E5M2 | DType::F8_E8M0) => Some("uint8"),
        _ => None,
    };
    Ok(Some(match view {
        Some(v) => {
            let torch = value.py().import("torch")?;
            let viewed = t.call_method1("view", (torch.getattr(v)?,))?;
            (viewed.call_method0("numpy")?, d)
        }
        None => (t.call_method0("numpy")?, None),
    }))
}

/// A byte size from `None`, an `int`, or a string such as `"24GiB"` (the crate's
/// `parse_bytes`).
pub fn bytes_arg(v: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Option<u64>> {
    let Some(v) = v.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    if let Ok(s) = v.extract::<String>() {
        return vramswap::swap::parse_bytes_for(what, &s).py().map(Some);
    }
    if v.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "{what} must be bytes as an int or a string such as \"24GiB\", not a bool"
        )));
    }
    match v.extract::<i128>() {
        Ok(n) if n >= 0 && n <= u64::MAX as i128 => Ok(Some(n as u64)),
        Ok(n) => Err(crate::errors::to_py(Error::InvalidArgument(format!(
            "{what} of {n} bytes is out of range"
        )))),
        Err(_) => Err(PyTypeError::new_err(format!(
            "{what} must be bytes as an int or a string such as \"24GiB\""
        ))),
    }
}
