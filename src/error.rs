//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in vramswap. Variants carry the numbers a user needs to act:
/// sizes, addresses, the driver call and its error name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A driver call (CUDA, or the simulated device standing in for it) failed.
    #[error("{call} failed: {name} ({code}){}", if .detail.is_empty() { String::new() } else { format!(": {}", .detail) })]
    Driver {
        /// The driver function, e.g. `cuMemMap`; on `sim`, the simulated operation it stands for
        /// (`simulated map`, see [`crate::backend::sim::sim_operation`]).
        call: &'static str,
        /// Numeric `CUresult`.
        code: u32,
        /// `CUresult` name, e.g. `CUDA_ERROR_INVALID_VALUE`.
        name: String,
        /// What the driver (or simulator) said beyond the name.
        detail: String,
    },
    /// The device has no room for an allocation the backend was asked for.
    #[error("device out of memory: {call} of {requested} bytes failed with {free} of {total} bytes free")]
    DeviceOutOfMemory {
        /// The driver function.
        call: &'static str,
        /// Bytes asked for.
        requested: u64,
        /// Bytes free on the device when it failed.
        free: u64,
        /// Device memory in all.
        total: u64,
    },
    /// The caching allocator could not satisfy a request even after freeing its cache and asking
    /// the pressure handlers.
    #[error(
        "caching allocator out of memory: tried to allocate {requested} bytes; {allocated} bytes \
         allocated, {reserved} bytes reserved ({fragmented} of them free but fragmented), \
         {device_free} bytes free on the device, limit {}",
        .limit.map(|l| format!("{l} bytes")).unwrap_or_else(|| "none".into())
    )]
    AllocatorOutOfMemory {
        /// Bytes asked for (after rounding).
        requested: u64,
        /// Bytes in live blocks.
        allocated: u64,
        /// Bytes held from the backend.
        reserved: u64,
        /// Bytes free on the device.
        device_free: u64,
        /// The allocator's memory limit, if any.
        limit: Option<u64>,
        /// Reserved bytes that are free but in pieces too small for the request.
        fragmented: u64,
    },
    /// The pinned host budget would be exceeded.
    #[error("host budget exceeded: {requested} bytes requested, {used} of {budget} bytes in use")]
    HostBudgetExceeded {
        /// Bytes asked for.
        requested: u64,
        /// Bytes already in use.
        used: u64,
        /// The budget.
        budget: u64,
    },
    /// The device budget of the swap engine cannot fit a weight set, even after evicting every
    /// set no guard holds.
    #[error("device budget exceeded: {requested} bytes needed, {pinned} bytes held by guards, budget {budget} bytes")]
    DeviceBudgetExceeded {
        /// Bytes needed.
        requested: u64,
        /// Bytes of resident sets that guards keep on the device.
        pinned: u64,
        /// The budget.
        budget: u64,
    },
    /// A backend cannot be used here (no driver, no device).
    #[error("{backend} backend unavailable: {reason}")]
    BackendUnavailable {
        /// `cuda` or `sim`.
        backend: &'static str,
        /// Why.
        reason: String,
    },
    /// A device ordinal the backend does not have (`CUDA_ERROR_INVALID_DEVICE` on CUDA).
    #[error("device {ordinal} does not exist: the {backend} backend has {count} device(s){}", if *.count > 0 { format!(", ordinals 0 to {}", .count - 1) } else { String::new() })]
    InvalidDevice {
        /// `cuda` or `sim`.
        backend: &'static str,
        /// The ordinal asked for.
        ordinal: i32,
        /// How many devices there are.
        count: u32,
    },
    /// A caller passed something out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A configuration string or value is wrong.
    #[error("configuration error in `{key}`: {problem}")]
    Config {
        /// The key (or variable) at fault.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A file is not what it claims to be (malformed safetensors header, bad index).
    #[error("{}: {problem}", .path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong, in one line.
        problem: String,
    },
    /// An I/O error on a file.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A named thing does not exist.
    #[error("{kind} `{name}` not found")]
    NotFound {
        /// What kind of thing (weight set, tensor, pointer).
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A named thing already exists.
    #[error("{kind} `{name}` already exists")]
    AlreadyExists {
        /// What kind of thing.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The operation conflicts with the current state (an offload of a set a guard holds, a
    /// double free).
    #[error("invalid state: {0}")]
    InvalidState(String),
    /// Bytes read back do not match what was written.
    #[error("checksum mismatch in {what}: expected {expected:#018x}, got {actual:#018x}")]
    ChecksumMismatch {
        /// What was checked.
        what: String,
        /// Checksum of the source.
        expected: u64,
        /// Checksum of the copy.
        actual: u64,
    },
    /// The backend or build does not support this.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The shared host store (`vramswap store serve`) cannot be reached, does not speak this
    /// client's protocol, or refused a request. `kind` is the class the store gave its refusal
    /// (a set of that name holding other contents is [`ErrorKind::AlreadyExists`], a budget too
    /// small [`ErrorKind::OutOfMemory`]); `None` when no store answered as one.
    #[error("host store at {}: {problem}", .socket.display())]
    Store {
        /// The store's socket.
        socket: PathBuf,
        /// The class of the store's refusal, if it refused.
        kind: Option<ErrorKind>,
        /// What went wrong.
        problem: String,
    },
}

/// Broad classes of [`Error`], for C status codes and Python exception classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A driver call failed.
    Driver,
    /// Device or allocator out of memory, or a budget exceeded.
    OutOfMemory,
    /// The backend is unavailable.
    BackendUnavailable,
    /// Bad argument or configuration.
    InvalidArgument,
    /// A device ordinal the backend does not have.
    InvalidDevice,
    /// Malformed input file.
    Malformed,
    /// I/O error.
    Io,
    /// Not found.
    NotFound,
    /// Already exists.
    AlreadyExists,
    /// Wrong state.
    InvalidState,
    /// Integrity check failed.
    ChecksumMismatch,
    /// Not supported.
    Unsupported,
    /// The shared host store cannot be reached or does not speak this client's protocol.
    Store,
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Driver { name, .. } if name == "CUDA_ERROR_OUT_OF_MEMORY" => {
                ErrorKind::OutOfMemory
            }
            Error::Driver { .. } => ErrorKind::Driver,
            Error::DeviceOutOfMemory { .. }
            | Error::AllocatorOutOfMemory { .. }
            | Error::HostBudgetExceeded { .. }
            | Error::DeviceBudgetExceeded { .. } => ErrorKind::OutOfMemory,
            Error::BackendUnavailable { .. } => ErrorKind::BackendUnavailable,
            Error::InvalidArgument(_) | Error::Config { .. } => ErrorKind::InvalidArgument,
            Error::InvalidDevice { .. } => ErrorKind::InvalidDevice,
            Error::Malformed { .. } => ErrorKind::Malformed,
            Error::Io { .. } => ErrorKind::Io,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::InvalidState(_) => ErrorKind::InvalidState,
            Error::ChecksumMismatch { .. } => ErrorKind::ChecksumMismatch,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::Store { kind, .. } => kind.unwrap_or(ErrorKind::Store),
        }
    }

    /// True for the out-of-memory class (device, allocator, budgets).
    pub fn is_out_of_memory(&self) -> bool {
        self.kind() == ErrorKind::OutOfMemory
    }

    /// The driver error name, when this is a driver error.
    pub fn driver_name(&self) -> Option<&str> {
        match self {
            Error::Driver { name, .. } => Some(name),
            Error::DeviceOutOfMemory { .. } => Some("CUDA_ERROR_OUT_OF_MEMORY"),
            _ => None,
        }
    }
}

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A value of the shared `key:value` grammar ([`vramswap_sim::kv`]) that does not parse is a
/// configuration error naming its key.
impl From<vramswap_sim::KvError> for Error {
    fn from(e: vramswap_sim::KvError) -> Error {
        Error::Config {
            key: e.key,
            problem: e.problem,
        }
    }
}
