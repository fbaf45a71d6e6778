//! `vramswap._vramswap`: the Python extension, a thin layer over the `vramswap` crate.
//!
//! - [`engine::Engine`]: `SwapEngine` with a caching allocator attached;
//! - [`handle::Handle`]: a `WeightGuard`, with NumPy copies and DLPack exports;
//! - [`errors`]: `vramswap.Error` and a subclass per `ErrorKind`;
//! - `info`, `check_free`, and a Rust-side timing helper for the overhead benchmark.
//!
//! Every call that may wait (a copy, a load, a driver call) releases the GIL; no lock is held
//! across a GIL release.

use std::time::Instant;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use vramswap::backend::{self, BackendChoice};

mod convert;
mod dlpack;
mod engine;
mod errors;
mod handle;

use errors::IntoPyResult;

/// The device: backend, why it was chosen, its properties and free memory.
#[pyfunction]
#[pyo3(signature = (backend="auto", device=0))]
fn info<'py>(py: Python<'py>, backend: &str, device: i32) -> PyResult<Bound<'py, PyAny>> {
    let choice: BackendChoice = backend.parse().py()?;
    let v = py
        .allow_threads(|| -> vramswap::Result<serde_json::Value> {
            let (b, why) = backend::open(choice, device)?;
            let mem = b.mem_info()?;
            Ok(serde_json::json!({
                "backend": b.kind().to_string(),
                "selected_because": why,
                "device": b.properties(),
                "memory": mem,
            }))
        })
        .py()?;
    convert::to_py(py, &v)
}

/// What the shared host store at `socket` holds: `host_used`, `host_budget`, `sets` (each
/// `name`, `bytes`, `clients`, `phase`, `source`) and `counters` (`loads`, `puts`,
/// `attaches`, `evictions`, `discarded`); raises StoreError when no store answers there.
#[pyfunction]
fn store_status<'py>(py: Python<'py>, socket: std::path::PathBuf) -> PyResult<Bound<'py, PyAny>> {
    let s = py
        .allow_threads(|| vramswap::store::StoreClient::new(socket).status())
        .py()?;
    convert::serde_to_py(py, &s)
}

/// True when `nbytes` of device memory are free now.
#[pyfunction]
#[pyo3(signature = (nbytes, backend="auto", device=0))]
fn check_free(
    py: Python<'_>,
    nbytes: &Bound<'_, PyAny>,
    backend: &str,
    device: i32,
) -> PyResult<bool> {
    let n = convert::bytes_arg(Some(nbytes), "nbytes")?.unwrap_or(0);
    let choice: BackendChoice = backend.parse().py()?;
    py.allow_threads(|| -> vramswap::Result<bool> {
        let (b, _) = backend::open(choice, device)?;
        Ok(b.mem_info()?.free >= n)
    })
    .py()
}

/// Writes a dict of NumPy arrays to a `.safetensors` file (the crate's writer), e.g. to make a
/// file-backed set that `Engine.release` can drop and reload.
#[pyfunction]
#[pyo3(signature = (path, arrays, dtypes=None))]
fn save_safetensors(
    py: Python<'_>,
    path: std::path::PathBuf,
    arrays: &Bound<'_, PyDict>,
    dtypes: Option<&Bound<'_, PyDict>>,
) -> PyResult<()> {
    let held = engine::collect_arrays(py, arrays, dtypes)?;
    let list = engine::as_list(&held);
    let tensors: Vec<(&str, vramswap::weights::DType, &[u64], &[u8])> = list
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.as_slice(), *b))
        .collect();
    py.allow_threads(|| vramswap::load::save(&path, &tensors))
        .py()
}

/// Rust-side timings of the calls the Python benchmark times from Python: nanoseconds per
/// `acquire` + drop of a resident set, per `status()`, and per `status()` serialised to JSON.
#[pyfunction]
fn _bench_rust<'py>(
    py: Python<'py>,
    engine: &engine::Engine,
    name: &str,
    iters: u64,
) -> PyResult<Bound<'py, PyDict>> {
    let swap = engine.live()?.swap;
    let iters = iters.max(1);
    let (acq, st, sj) = py
        .allow_threads(|| -> vramswap::Result<(f64, f64, f64)> {
            drop(swap.acquire(name)?);
            let t = Instant::now();
            for _ in 0..iters {
                drop(std::hint::black_box(swap.acquire(name)?));
            }
            let acq = t.elapsed().as_nanos() as f64 / iters as f64;
            let t = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(swap.status());
            }
            let st = t.elapsed().as_nanos() as f64 / iters as f64;
            let t = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(serde_json::to_value(swap.status()).ok());
            }
            let sj = t.elapsed().as_nanos() as f64 / iters as f64;
            Ok((acq, st, sj))
        })
        .py()?;
    let d = PyDict::new(py);
    d.set_item("acquire_ns", acq)?;
    d.set_item("status_ns", st)?;
    d.set_item("status_json_ns", sj)?;
    Ok(d)
}

/// The Rust status JSON as text (what the C ABI and the CLI print), for the test that
/// `Engine.status()` has the same content.
#[pyfunction]
fn _status_json(engine: &engine::Engine) -> PyResult<String> {
    let st = engine.live()?.swap.status();
    serde_json::to_string(&st)
        .map_err(|e| vramswap::Error::InvalidState(format!("cannot serialise: {e}")))
        .py()
}

/// Raises the exception an example error of `kind` maps to (for the test suite).
#[pyfunction]
fn _raise_example(kind: &str) -> PyResult<()> {
    match errors::example(kind) {
        Some(e) => Err(errors::to_py(e)),
        None => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "no error kind `{kind}`"
        ))),
    }
}

/// Every error kind, as `Error.kind` names it.
#[pyfunction]
fn _error_kinds() -> Vec<String> {
    errors::kind_names()
}

#[pymodule]
fn _vramswap(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_class::<engine::Engine>()?;
    m.add_class::<handle::Handle>()?;
    m.add_class::<dlpack::DeviceTensor>()?;
    m.add_function(wrap_pyfunction!(info, m)?)?;
    m.add_function(wrap_pyfunction!(store_status, m)?)?;
    m.add_function(wrap_pyfunction!(check_free, m)?)?;
    m.add_function(wrap_pyfunction!(save_safetensors, m)?)?;
    m.add_function(wrap_pyfunction!(_bench_rust, m)?)?;
    m.add_function(wrap_pyfunction!(_status_json, m)?)?;
    m.add_function(wrap_pyfunction!(_raise_example, m)?)?;
    m.add_function(wrap_pyfunction!(_error_kinds, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
