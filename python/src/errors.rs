//! `vramswap.Error` and one subclass per [`ErrorKind`], each also deriving from the built-in
//! exception a Python user would catch (`MemoryError`, `ValueError`, `KeyError`, ...).
//!
//! The classes are made at module initialisation with `type(name, bases, namespace)`, because
//! PyO3's `create_exception!` takes a single base.

use pyo3::exceptions::{PyException, PyTypeError};
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyDict, PyTuple, PyType};
use vramswap::{Error, ErrorKind};

/// (kind, class name, built-in base besides `vramswap.Error`, doc).
const CLASSES: [(ErrorKind, &str, Option<&str>, &str); 13] = [
    (
        ErrorKind::Driver,
        "DriverError",
        Some("RuntimeError"),
        "A CUDA driver call (or the simulated device standing in for it) failed.",
    ),
    (
        ErrorKind::OutOfMemory,
        "OutOfMemoryError",
        Some("MemoryError"),
        "Device or allocator out of memory, or a device or host budget exceeded.",
    ),
    (
        ErrorKind::BackendUnavailable,
        "BackendUnavailableError",
        Some("RuntimeError"),
        "The backend cannot be used here (no driver, no device).",
    ),
    (
        ErrorKind::InvalidArgument,
        "InvalidArgumentError",
        Some("ValueError"),
        "An argument or configuration value is wrong.",
    ),
    (
        ErrorKind::InvalidDevice,
        "InvalidDeviceError",
        Some("ValueError"),
        "A device ordinal the backend does not have.",
    ),
    (
        ErrorKind::Malformed,
        "MalformedFileError",
        Some("ValueError"),
        "A file is not what it claims to be (e.g. a malformed safetensors header).",
    ),
    (
        ErrorKind::Io,
        "IoError",
        Some("OSError"),
        "An I/O error on a file.",
    ),
    (
        ErrorKind::NotFound,
        "NotFoundError",
        Some("KeyError"),
        "A weight set or tensor of that name does not exist.",
    ),
    (
        ErrorKind::AlreadyExists,
        "AlreadyExistsError",
        Some("ValueError"),
        "A weight set of that name already exists.",
    ),
    (
        ErrorKind::InvalidState,
        "InvalidStateError",
        Some("RuntimeError"),
        "The operation conflicts with the current state (e.g. offloading a set a handle holds).",
    ),
    (
        ErrorKind::ChecksumMismatch,
        "ChecksumMismatchError",
        None,
        "Bytes read back from the device do not match what was written.",
    ),
    (
        ErrorKind::Unsupported,
        "UnsupportedError",
        Some("NotImplementedError"),
        "The backend or build does not support this.",
    ),
    (
        ErrorKind::Store,
        "StoreError",
        Some("ConnectionError"),
        "The shared host store (`store=`, `VRAMSWAP_STORE`) cannot be reached or does not speak \
         this version's protocol. Its refusals have the class of their kind.",
    ),
];

static BASE: GILOnceCell<Py<PyType>> = GILOnceCell::new();
static KINDS: GILOnceCell<Vec<Py<PyType>>> = GILOnceCell::new();

fn kind_name(kind: ErrorKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{kind:?}"))
}

/// Creates the classes and adds them to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let builtins = py.import("builtins")?;
    let type_ = builtins.getattr("type")?;
    let ns = PyDict::new(py);
    ns.set_item("__module__", "vramswap")?;
    ns.set_item(
        "__doc__",
        "Base class of every vramswap error; `kind` names the class of error.",
    )?;
    ns.set_item("kind", py.None())?;
    let base = type_
        .call1((
            "Error",
            PyTuple::new(py, [py.get_type::<PyException>()])?,
            ns,
        ))?
        .downcast_into::<PyType>()?;
    m.add("Error", &base)?;
    let mut kinds = Vec::new();
    for (kind, name, builtin, doc) in CLASSES {
        let mut bases = vec![base.clone().into_any()];
        if let Some(b) = builtin {
            bases.push(builtins.getattr(b)?);
        }
        let ns = PyDict::new(py);
        ns.set_item("__module__", "vramswap")?;
        ns.set_item("__doc__", doc)?;
        ns.set_item("kind", kind_name(kind))?;
        if kind == ErrorKind::OutOfMemory {
            // The allocator's numbers, set on the instance when it is the allocator that ran
            // out (`None` otherwise: a budget or the driver).
            for field in OOM_FIELDS {
                ns.set_item(field, py.None())?;
            }
        }
        // KeyError quotes its message in str(); the Rust message reads better as it is.
        ns.set_item("__str__", py.get_type::<PyException>().getattr("__str__")?)?;
        let cls = type_
            .call1((name, PyTuple::new(py, bases)?, ns))?
            .downcast_into::<PyType>()?;
        m.add(name, &cls)?;
        kinds.push(cls.unbind());
    }
    let _ = BASE.set(py, base.unbind());
    let _ = KINDS.set(py, kinds);
    Ok(())
}

/// The attributes of `OutOfMemoryError` that carry the allocator's numbers.
const OOM_FIELDS: [&str; 6] = [
    "requested",
    "allocated",
    "reserved",
    "device_free",
    "limit",
    "fragmented",
];

/// The Python exception for a vramswap error, with the Rust message; the allocator's
/// out-of-memory error also carries its numbers as attributes ([`OOM_FIELDS`]; `limit` is
/// `None` when the allocator has none).
pub fn to_py(e: Error) -> PyErr {
    let kind = e.kind();
    Python::with_gil(|py| match KINDS.get(py) {
        Some(classes) => {
            let i = CLASSES
                .iter()
                .position(|c| c.0 == kind)
                .expect("every ErrorKind has a class");
            let err = PyErr::from_type(classes[i].bind(py).clone(), e.to_string());
            if let Error::AllocatorOutOfMemory {
                requested,
                allocated,
                reserved,
                device_free,
                limit,
                fragmented,
            } = e
            {
                let v = err.value(py);
                let numbers = [requested, allocated, reserved, device_free];
                let set = || -> PyResult<()> {
                    for (field, n) in OOM_FIELDS.iter().zip(numbers) {
                        v.setattr(*field, n)?;
                    }
                    v.setattr("limit", limit)?;
                    v.setattr("fragmented", fragmented)
                };
                if let Err(failed) = set() {
                    return failed;
                }
            }
            err
        }
        None => PyTypeError::new_err(e.to_string()),
    })
}

/// Shorthand for results of the crate.
pub trait IntoPyResult<T> {
    /// Maps the crate's error to its Python exception.
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for vramswap::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

/// An example error of a kind, named as `Error.kind` names it: lets the test suite check that
/// every kind maps to its class, including kinds that are hard to provoke (a checksum mismatch).
pub fn example(kind: &str) -> Option<Error> {
    let e = match kind {
        "driver" => Error::Driver {
            call: "cuMemcpyHtoDAsync_v2",
            code: 719,
            name: "CUDA_ERROR_LAUNCH_FAILED".into(),
            detail: "example".into(),
        },
        "out_of_memory" => Error::DeviceBudgetExceeded {
            requested: 2,
            pinned: 0,
            budget: 1,
        },
        "backend_unavailable" => Error::BackendUnavailable {
            backend: "cuda",
            reason: "example".into(),
        },
        "invalid_argument" => Error::InvalidArgument("example".into()),
        "invalid_device" => Error::InvalidDevice {
            backend: "sim",
            ordinal: 3,
            count: 1,
        },
        "malformed" => Error::Malformed {
            path: "example.safetensors".into(),
            problem: "example".into(),
        },
        "io" => Error::Io {
            path: "example".into(),
            source: std::io::Error::other("example"),
        },
        "not_found" => Error::NotFound {
            kind: "weight set",
            name: "example".into(),
        },
        "already_exists" => Error::AlreadyExists {
            kind: "weight set",
            name: "example".into(),
        },
        "invalid_state" => Error::InvalidState("example".into()),
        "checksum_mismatch" => Error::ChecksumMismatch {
            what: "example".into(),
            expected: 1,
            actual: 2,
        },
        "unsupported" => Error::Unsupported("example".into()),
        "store" => Error::Store {
            socket: "/tmp/example.sock".into(),
            kind: None,
            problem: "example".into(),
        },
        _ => return None,
    };
    Some(e)
}

/// Every kind name, in the order of the classes.
pub fn kind_names() -> Vec<String> {
    CLASSES.iter().map(|c| kind_name(c.0)).collect()
}
